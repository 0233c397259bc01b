"""argv NAME APP_DIR ERRNO: the file system refuses locks with that errno
(simulated at the platform seam, fcntl.flock); prints what tcbon said.
"""
import errno
import fcntl
import os
import sys

import tcbon

name, app_dir, code = sys.argv[1], sys.argv[2], getattr(errno, sys.argv[3])


def flock(fd, operation):
    raise OSError(code, os.strerror(code))


fcntl.flock = flock
for call in ("start", "send"):
    try:
        getattr(tcbon.Process(name, app_dir=app_dir), call)(*(("event",) if call == "send" else ()))
        print(call, "no error")
    except tcbon.StateError as exc:
        print(call, exc.path.endswith(".lock"), errno.errorcode[code] in str(exc),
              "local disk" in str(exc))
print("cli", tcbon.main([name, "--app-dir", app_dir]))
