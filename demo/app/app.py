#!/usr/bin/env python3
"""Demo web service that shipit deploys (README demo and integration tests).

Standard library only. Expects the usual release layout on a host:

    <deploy_to>/releases/<release>/app.py   (this file, reached via <deploy_to>/current)
    <deploy_to>/shared/app.pid              written at start-up
    <deploy_to>/shared/log/app.log          log (shared_dirs = ["log"])
    <deploy_to>/shared/health-fail          if present, /health answers 500 (if it
                                            holds a version, only that version fails)

Endpoints:
    GET /health  200 "ok release=<release> version=<version>"  (500 "failing" if
                 shared/health-fail exists and is empty or names this version)
    GET /        200 "<version> <release> <hostname>"
    GET /slow?seconds=N  the same after sleeping N s (max 30): an in-flight request
                 that a graceful stop must let finish

Knobs: APP_PORT (default 8080); boot delay in seconds from the file BOOT_DELAY next
to this file or, overriding it, the env var APP_BOOT_DELAY (slept before the port is
bound, to simulate a slow boot). SIGTERM/SIGINT: stop accepting, finish in-flight
requests (at most 10 s), exit 0.
"""

import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DRAIN_TIMEOUT = 10.0  # seconds in-flight requests get after SIGTERM

APP_DIR = os.path.dirname(os.path.realpath(__file__))
RELEASE = os.path.basename(APP_DIR)


def _shared_dir():
    """<deploy_to>/shared, but only when we really run from releases/<id>/.

    Run from a checkout (python3 demo/app/app.py) there is no deploy layout, and
    writing pid/log files into the checkout's grandparent would litter it.
    """
    releases = os.path.dirname(APP_DIR)
    if os.path.basename(releases) != "releases":
        return os.environ.get("APP_SHARED_DIR")
    return os.path.join(os.path.dirname(releases), "shared")


SHARED = _shared_dir()


def _failing():
    """True if shared/health-fail says this version must fail its health check."""
    try:
        with open(os.path.join(SHARED, "health-fail")) as f:
            wanted = f.read().strip()
    except OSError:
        return False
    return wanted in ("", VERSION)


def _read(path, default=""):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return default


VERSION = _read(os.path.join(APP_DIR, "VERSION"), "unknown")
HOSTNAME = socket.gethostname()


def _setup_logging():
    log = logging.getLogger("app")
    log.setLevel(logging.INFO)
    fmt = logging.Formatter(
        f"%(asctime)s {HOSTNAME} {RELEASE} pid={os.getpid()} %(message)s"
    )
    handler = None
    if SHARED:
        try:
            handler = logging.FileHandler(os.path.join(SHARED, "log", "app.log"))
        except OSError:
            handler = None  # no shared/log (yet): stderr is all we have
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    log.addHandler(handler)
    # A full disk must not take the app down; logging already swallows write errors,
    # this only stops it from printing a traceback for each of them.
    logging.raiseExceptions = False
    return log


LOG = _setup_logging()


def _write_pidfile():
    if not SHARED:
        return
    path = os.path.join(SHARED, "app.pid")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)  # readers never see a half-written pid
    except OSError as e:
        LOG.warning("cannot write %s: %s", path, e)


def _boot_delay():
    raw = os.environ.get("APP_BOOT_DELAY")
    if raw is None:
        raw = _read(os.path.join(APP_DIR, "BOOT_DELAY"), None)
    if raw is None or raw == "":
        return 0.0
    try:
        return max(0.0, float(raw))
    except ValueError:
        LOG.warning("ignoring boot delay %r: not a number", raw)
        return 0.0


class Server(ThreadingHTTPServer):
    daemon_threads = True  # an idle keep-alive connection must not block exit
    allow_reuse_address = True

    def server_bind(self):
        # HTTPServer.server_bind() calls socket.getfqdn(), a reverse DNS lookup that
        # stalls for seconds on a host without working DNS. The name is never used.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stopping = False
        self.inflight = 0
        self.idle = threading.Condition()

    def handle_error(self, request, client_address):
        # HAProxy resets idle keep-alive connections and may drop a health check
        # before the body is written: routine, not worth a traceback in the log.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def wait_idle(self, timeout):
        deadline = time.monotonic() + timeout
        with self.idle:
            while self.inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.idle.wait(left)
        return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server_version = "shipit-demo"

    def _reply(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.server.stopping:
            # Tell keep-alive clients to reconnect (to whichever server is still up).
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _route(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            if SHARED and _failing():
                return 500, "failing\n"
            return 200, f"ok release={RELEASE} version={VERSION}\n"
        if path == "/":
            return 200, f"{VERSION} {RELEASE} {HOSTNAME}\n"
        if path == "/slow":
            # A long in-flight request, for checking that a restart drains it.
            query = self.path.partition("?")[2]
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)
            try:
                seconds = min(30.0, max(0.0, float(params.get("seconds", "2"))))
            except ValueError:
                return 400, "seconds must be a number\n"
            time.sleep(seconds)
            return 200, f"{VERSION} {RELEASE} {HOSTNAME} slept={seconds:g}\n"
        return 404, "not found\n"

    def _handle(self):
        with self.server.idle:
            self.server.inflight += 1
        try:
            status, body = self._route()
            self._reply(status, body)
        finally:
            with self.server.idle:
                self.server.inflight -= 1
                self.server.idle.notify_all()

    do_GET = _handle
    do_HEAD = _handle

    def log_message(self, fmt, *args):
        # Health checks arrive twice a second per load balancer: log only failures.
        if self.path.startswith("/health") and "200" in (str(a) for a in args):
            return
        LOG.info("%s %s", self.address_string(), fmt % args)


def main():
    port = int(os.environ.get("APP_PORT", "8080"))

    # Until the server exists, a SIGTERM has nothing to drain: just leave.
    def early_exit(signum, _frame):
        LOG.info("signal %d during boot, exiting", signum)
        sys.exit(0)

    signal.signal(signal.SIGTERM, early_exit)
    signal.signal(signal.SIGINT, early_exit)
    _write_pidfile()

    delay = _boot_delay()
    if delay:
        LOG.info("booting: sleeping %.1f s before binding :%d", delay, port)
        time.sleep(delay)

    try:
        server = Server(("0.0.0.0", port), Handler)
    except OSError as e:
        LOG.error("cannot listen on :%d: %s", port, e)
        print(f"app: cannot listen on :{port}: {e}", file=sys.stderr)
        return 1

    def graceful(signum, _frame):
        if server.stopping:
            return
        server.stopping = True
        LOG.info("signal %d: draining", signum)
        # shutdown() blocks until serve_forever() returns, and serve_forever() runs in
        # this (the signal-handling) thread, so it has to be called from another one.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)

    LOG.info("listening on :%d version=%s", port, VERSION)
    server.serve_forever(poll_interval=0.1)
    server.socket.close()  # new connections are refused from here on
    drained = server.wait_idle(DRAIN_TIMEOUT)
    LOG.info("stopped (%s)", "drained" if drained else "drain timeout, dropping requests")
    if SHARED:
        pidfile = os.path.join(SHARED, "app.pid")
        if _read(pidfile) == str(os.getpid()):
            try:
                os.unlink(pidfile)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
