"""A process that ignores SIGINT (and SIGTERM with --ignore-term): exercises the escalation."""

import signal
import sys
import time

signal.signal(signal.SIGINT, signal.SIG_IGN)
if "--ignore-term" in sys.argv or "ignore_term:=true" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("stubborn node up", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    time.sleep(0.05)
