"""argv NAME APP_DIR REFUSE: Windows' sharing violations (WinError 32), simulated
where the OS says them: os.remove and os.replace refuse with PermissionError,
REFUSE = "briefly" (3 times each), "remove" (always), "held" (both, always, once
the file exists, as while a reader holds it) or "sealed" (as "held", and writing
the .pid file too, as while a reader that shares no writing holds it).
Starts, stops and starts again; prints what happened.
"""
import errno
import os
import sys

import tcbon

name, app_dir, refuse = sys.argv[1:4]
refused: dict = {}


def refusing(real):
    def call(*args):
        key = real.__name__
        refused[key] = refused.get(key, 0) + 1
        held = refuse in ("held", "sealed") and os.path.exists(args[-1])
        if refuse == key or held or (refuse == "briefly" and refused[key] <= 3):
            raise PermissionError(errno.EACCES, "The process cannot access the file because "
                                  "it is being used by another process")
        return real(*args)
    return call


os.remove, os.replace = refusing(os.remove), refusing(os.replace)
real_open = os.open


def sealed_open(path, flags, *args, **kwargs):
    writing = flags & (os.O_WRONLY | os.O_RDWR)
    if refuse == "sealed" and writing and path.endswith(".pid") and os.path.exists(path):
        raise PermissionError(errno.EACCES, "The process cannot access the file because it "
                              "is being used by another process")
    return real_open(path, flags, *args, **kwargs)


os.open = sealed_open


class App(tcbon.Process):
    def on_stop(self):
        print("on_stop ran")


for _attempt in (1, 2):
    app = App(name, app_dir=app_dir)
    try:
        app.start()
    except tcbon.StateError as exc:
        print("start:", exc.path == app.pid_file, "keeps it open" in str(exc), app.running)
        break
    client = tcbon.Process(name, app_dir=app_dir)
    print("serving", client.info()["pid"] == os.getpid())
    app.stop()
    print("stopped", app.running, tcbon._read_state(app.pid_file))
