#!/usr/bin/env python3
"""Demo service that shipit deploys (README demo and integration tests).

Standard library only. Expects the usual release layout on a host:

    <deploy_to>/releases/<release>/app.py   (this file, reached via <deploy_to>/current)
    <deploy_to>/shared/app.pid              written at start-up (worker.pid in worker mode)
    <deploy_to>/shared/log/app.log          log (worker.log; shared_dirs = ["log"])
    <deploy_to>/shared/health-fail          if present, /health answers 500 (if it
                                            holds a version, only that version fails)

Endpoints (web mode, the default):
    GET /health  200 "ok release=<release> version=<version>", with " revision=<rev>"
                 after the release when the release has a REVISION file; 500 "failing"
                 if shared/health-fail says so, 503 "unhealthy: ..." as the knobs say
    GET /        200 "<version> <release> <hostname>" (then " <rev>" with a REVISION);
                 500 "error <version> <release> <hostname> ..." for a share of
                 requests with ERROR_RATE
    GET /slow?seconds=N  the same after sleeping N s (max 30): an in-flight request
                 that a graceful stop must let finish

Knobs: each is a file in the release directory (next to this file), so that one
release can misbehave and the next not, or an environment variable that overrides
the file (set in the restart command: `APP_ERROR_RATE=0.2 bin/restart`).
    APP_PORT                    port, default 8080
    BIND         APP_BIND       address to listen on, default 0.0.0.0; 127.0.0.1 makes
                                the app reachable from its own host only
    BOOT_DELAY   APP_BOOT_DELAY seconds to sleep before the port is bound (slow boot)
    REVISION     APP_REVISION   the release's revision (a git sha, say), reported by
                                /health and GET / (see above)
    ERROR_RATE   APP_ERROR_RATE share of GET / answered 500 while /health stays fine:
                                "0.2" or "20%". Exact: of every run of requests, the
                                share is met as closely as whole requests allow (0.25:
                                the 4th, 8th, 12th... fail)
    HEALTHY_FOR  APP_HEALTHY_FOR /health passes for this many seconds after the app
                                started serving, then answers 503 for good
    HEALTH_FLAP  APP_HEALTH_FLAP /health alternates: a number S passes for S seconds,
                                fails (503) for S seconds, and so on, from the start
                                of serving; "each" fails every other answer (the
                                1st passes, the 2nd fails, ...)
    MODE         APP_MODE       "web" (default) or "worker"

Worker mode (a MODE file saying worker, or `APP_MODE=worker bin/restart`): no port
at all. A loop writes <deploy_to>/shared/worker.heartbeat every 0.5 s ("release=<id>
version=<v> [revision=<rev>] time=<epoch seconds>"), with its pid in
shared/worker.pid, and logs to shared/log/worker.log. `app.py worker-health [MAX_AGE
[EXPECT]]` checks it: exit 0 if the pid is alive and the heartbeat at most MAX_AGE
seconds old (default 3) and containing EXPECT (e.g. "revision=<rev>"), else 1 with
the reason on stderr. BOOT_DELAY delays the first heartbeat; HEALTHY_FOR makes the
worker exit with status 1 after that many seconds (a crash); while
shared/health-fail says so, it stops writing heartbeats (a stuck worker).

SIGTERM/SIGINT: stop accepting, finish in-flight requests (at most 10 s), exit 0 (a
worker finishes its current beat).
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


def _knob(name, default=None):
    """A knob: env APP_<NAME> if set, else the file <NAME> in the release, else default."""
    raw = os.environ.get(f"APP_{name}")
    if raw is None:
        raw = _read(os.path.join(APP_DIR, name), None)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip()


VERSION = _read(os.path.join(APP_DIR, "VERSION"), "unknown")
HOSTNAME = socket.gethostname()
REVISION = _knob("REVISION")
MODE = _knob("MODE", "web")


def _setup_logging():
    log = logging.getLogger("app")
    log.setLevel(logging.INFO)
    fmt = logging.Formatter(
        f"%(asctime)s {HOSTNAME} {RELEASE} pid={os.getpid()} %(message)s"
    )
    handler = None
    if SHARED:
        name = "worker.log" if MODE == "worker" else "app.log"
        try:
            handler = logging.FileHandler(os.path.join(SHARED, "log", name))
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


PIDFILE = "worker.pid" if MODE == "worker" else "app.pid"


def _seconds(name):
    """A knob in seconds (>= 0), None if unset or not a number."""
    raw = _knob(name)
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        LOG.warning("ignoring %s %r: not a number of seconds", name, raw)
        return None


def _error_rate():
    raw = _knob("ERROR_RATE")
    if raw is None:
        return 0.0
    try:
        rate = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        LOG.warning("ignoring ERROR_RATE %r: not a share like 0.2 or 20%%", raw)
        return 0.0
    return min(1.0, max(0.0, rate))


def _write_pidfile():
    if not SHARED:
        return
    path = os.path.join(SHARED, PIDFILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)  # readers never see a half-written pid
    except OSError as e:
        LOG.warning("cannot write %s: %s", path, e)


def _boot_delay():
    return _seconds("BOOT_DELAY") or 0.0


class Misbehaviour:
    """The knobs that make a release fail on purpose, and their state."""

    def __init__(self):
        self.error_rate = _error_rate()
        self.healthy_for = _seconds("HEALTHY_FOR")
        flap = _knob("HEALTH_FLAP")
        self.flap_each = flap == "each"
        self.flap_period = None if self.flap_each else _seconds("HEALTH_FLAP")
        if self.flap_period == 0:
            self.flap_period = None
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.requests = 0  # GET / answered so far
        self.checks = 0  # /health answered so far

    def start(self):
        """The app serves from now on: HEALTHY_FOR and HEALTH_FLAP count from here."""
        self.started = time.monotonic()

    def error(self):
        """Whether this GET / answers 500: request n fails when floor(n * rate) grows."""
        if self.error_rate <= 0:
            return False
        with self.lock:
            self.requests += 1
            n = self.requests
        return int(n * self.error_rate) > int((n - 1) * self.error_rate)

    def unhealthy(self):
        """Why /health fails now (a string), or None."""
        age = time.monotonic() - self.started
        if self.healthy_for is not None and age >= self.healthy_for:
            return f"unhealthy: healthy for {self.healthy_for:g} s after start only"
        if self.flap_each:
            with self.lock:
                self.checks += 1
                n = self.checks
            if n % 2 == 0:
                return "unhealthy: flapping (every other check)"
        elif self.flap_period is not None and int(age / self.flap_period) % 2 == 1:
            return f"unhealthy: flapping ({self.flap_period:g} s up, {self.flap_period:g} s down)"
        return None


KNOBS = Misbehaviour()


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
            why = KNOBS.unhealthy()
            if why:
                return 503, why + "\n"
            revision = f" revision={REVISION}" if REVISION else ""
            return 200, f"ok release={RELEASE}{revision} version={VERSION}\n"
        if path == "/":
            who = f"{VERSION} {RELEASE} {HOSTNAME}{' ' + REVISION if REVISION else ''}"
            if KNOBS.error():
                return 500, f"error {who} (ERROR_RATE {KNOBS.error_rate:g})\n"
            return 200, who + "\n"
        if path == "/slow":
            # A long in-flight request, for checking that a restart drains it.
            query = self.path.partition("?")[2]
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)
            try:
                seconds = min(30.0, max(0.0, float(params.get("seconds", "2"))))
            except ValueError:
                return 400, "seconds must be a number\n"
            # The line that marks the moment a test's request is in flight here.
            LOG.info("slow request started (%g s)", seconds)
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


def _remove_pidfile():
    if SHARED:
        pidfile = os.path.join(SHARED, PIDFILE)
        if _read(pidfile) == str(os.getpid()):
            try:
                os.unlink(pidfile)
            except OSError:
                pass


HEARTBEAT_INTERVAL = 0.5  # seconds between a worker's heartbeats


def worker():
    """Worker mode: no port; a heartbeat file, rewritten every HEARTBEAT_INTERVAL."""
    stopping = threading.Event()

    def stop(signum, _frame):
        LOG.info("signal %d: stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _write_pidfile()
    delay = _boot_delay()
    if delay:
        LOG.info("booting: sleeping %.1f s before the first heartbeat", delay)
        if stopping.wait(delay):
            _remove_pidfile()
            return 0
    KNOBS.start()
    LOG.info("working, version=%s", VERSION)
    heartbeat = os.path.join(SHARED, "worker.heartbeat") if SHARED else None
    revision = f" revision={REVISION}" if REVISION else ""
    stuck = False
    while not stopping.is_set():
        age = time.monotonic() - KNOBS.started
        if KNOBS.healthy_for is not None and age >= KNOBS.healthy_for:
            LOG.error("crashing on purpose (HEALTHY_FOR %g s)", KNOBS.healthy_for)
            return 1  # the pid file stays behind, naming a dead process
        if SHARED and _failing():
            if not stuck:
                LOG.warning("shared/health-fail: no more heartbeats")
            stuck = True
        elif heartbeat:
            stuck = False
            tmp = f"{heartbeat}.{os.getpid()}.tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(f"release={RELEASE} version={VERSION}{revision} time={time.time():.3f}\n")
                os.replace(tmp, heartbeat)
            except OSError as e:
                LOG.warning("cannot write %s: %s", heartbeat, e)
        stopping.wait(HEARTBEAT_INTERVAL)
    LOG.info("stopped")
    _remove_pidfile()
    return 0


def worker_health(args):
    """`app.py worker-health [MAX_AGE [EXPECT]]`: is the worker alive and beating?"""
    max_age = float(args[0]) if args else 3.0
    expect = args[1] if len(args) > 1 else None

    def fail(why):
        print(f"worker-health: {why}", file=sys.stderr)
        return 1

    if not SHARED:
        return fail("not run from <deploy_to>/releases/<id>/app.py")
    pid = _read(os.path.join(SHARED, "worker.pid"))
    if not pid:
        return fail("no shared/worker.pid: worker not started")
    # Not just kill -0: a crashed worker stays a zombie until init reaps it.
    stat = _read(f"/proc/{pid}/stat")
    if not stat or stat.rpartition(") ")[2][:1] in ("Z", "X", ""):
        return fail(f"worker {pid} is not running")
    beat_path = os.path.join(SHARED, "worker.heartbeat")
    try:
        age = time.time() - os.stat(beat_path).st_mtime
    except OSError:
        return fail("no heartbeat yet")
    beat = _read(beat_path)
    if age > max_age:
        return fail(f"last heartbeat {age:.1f} s ago (more than {max_age:g} s): {beat}")
    if expect and expect not in beat:
        return fail(f"heartbeat lacks {expect!r}: {beat}")
    print(f"worker-health: ok, pid {pid}, beat {age:.1f} s ago: {beat}")
    return 0


def main():
    if sys.argv[1:2] == ["worker-health"]:
        return worker_health(sys.argv[2:])
    if MODE == "worker":
        return worker()
    if MODE != "web":
        print(f"app: MODE must be web or worker, not {MODE!r}", file=sys.stderr)
        return 2
    port = int(os.environ.get("APP_PORT", "8080"))
    bind = _knob("BIND", "0.0.0.0")

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
        server = Server((bind, port), Handler)
    except OSError as e:
        LOG.error("cannot listen on %s:%d: %s", bind, port, e)
        print(f"app: cannot listen on {bind}:{port}: {e}", file=sys.stderr)
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

    KNOBS.start()
    LOG.info("listening on %s:%d version=%s", bind, port, VERSION)
    server.serve_forever(poll_interval=0.1)
    server.socket.close()  # new connections are refused from here on
    drained = server.wait_idle(DRAIN_TIMEOUT)
    LOG.info("stopped (%s)", "drained" if drained else "drain timeout, dropping requests")
    _remove_pidfile()
    return 0


if __name__ == "__main__":
    sys.exit(main())
