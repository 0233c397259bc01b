"""argv NAME APP_DIR: after the GO_FILE barrier, start(replace=True, timeout=10) of
a new object; prints PRIMARY and the seconds it took, EXISTS and the seconds, or
ERROR and what was raised. The primary serves until stopped by anyone (at most
60 s), then prints STOPPED.
"""
import sys
import time

import barrier
import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
barrier.wait_for_go()
app = tcbon.Process(name, app_dir=app_dir, timeout=10)
started = time.monotonic()
try:
    app.start(replace=True)
except tcbon.ProcessExists:
    print("EXISTS %.3f" % (time.monotonic() - started), flush=True)
    sys.exit(0)
except Exception as exc:  # noqa: BLE001 - printed: the test says which launch failed, and how
    print("ERROR %.3f %s: %s" % (time.monotonic() - started, type(exc).__name__, exc), flush=True)
    sys.exit(0)
print("PRIMARY %.3f" % (time.monotonic() - started), flush=True)
deadline = time.monotonic() + 60
while app.is_primary and time.monotonic() < deadline:
    time.sleep(0.01)
if app.is_primary:  # not stopped by anyone within the minute
    app.stop()
print("STOPPED", flush=True)
