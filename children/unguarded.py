"""argv NAME APP_DIR UNGUARDED [ERRNO]: main(run=..., unguarded=UNGUARDED == "1");
with ERRNO, the file system refuses locks with it (at fcntl.flock). Prints
ON_START, OPENED primary (the handler, which answers exit code 3), RAN (run()),
ON_STOP; exits with what main() returned.
"""
import errno
import fcntl
import os
import sys

import tcbon

name, app_dir, unguarded = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if len(sys.argv) > 4:
    code = getattr(errno, sys.argv[4])

    def flock(fd, operation):
        raise OSError(code, os.strerror(code))
    fcntl.flock = flock
app = tcbon.Process(name, app_dir=app_dir)
app.on_start = lambda: print("ON_START", flush=True)
app.on_stop = lambda: print("ON_STOP", flush=True)
app.on("second-instance")(lambda event: print("OPENED", event["primary"], flush=True)
                          or {"exit_code": 3})
sys.exit(app.main(run=lambda: print("RAN", flush=True), unguarded=unguarded))
