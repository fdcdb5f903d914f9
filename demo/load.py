#!/usr/bin/env python3
"""Steady HTTP load through the load balancer while the demo deploys.

Sends requests over several keep-alive connections until stopped (SIGTERM or
SIGINT), then prints how many failed and which versions answered.
usage: load.py URL [CONNECTIONS] [RATE_PER_CONNECTION]
"""
import http.client
import signal
import sys
import threading
import time
import urllib.parse
from collections import Counter

url = urllib.parse.urlsplit(sys.argv[1])
connections = int(sys.argv[2]) if len(sys.argv) > 2 else 4
rate = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
stop = threading.Event()
lock = threading.Lock()
versions = Counter()
failures = Counter()


def worker():
    conn = None
    while not stop.is_set():
        started = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=5)
            conn.request("GET", url.path or "/")
            response = conn.getresponse()
            body = response.read().decode(errors="replace").split()
            with lock:
                if response.status == 200 and body:
                    versions[body[0]] += 1
                else:
                    failures["status %d" % response.status] += 1
        except Exception as e:  # every kind of failure counts
            with lock:
                failures[type(e).__name__] += 1
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))


signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
for t in threads:
    t.start()
while not stop.is_set():
    stop.wait(0.2)
for t in threads:
    t.join(timeout=6)
total = sum(versions.values()) + sum(failures.values())
print("load: %d requests, %d failed%s; answered by %s" % (
    total,
    sum(failures.values()),
    " (%s)" % ", ".join("%s: %d" % kv for kv in failures.items()) if failures else "",
    ", ".join("%s: %d" % kv for kv in sorted(versions.items())) or "nobody",
))
sys.exit(1 if failures else 0)
