"""argv NAME APP_DIR: a primary forks; the child exits (atexit runs), or stops
its copy first; the parent must still be the one primary. Prints 'ok'.
"""
import os
import sys

import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
app = tcbon.Process(name, app_dir=app_dir)
app.start()
for how in ("exit", "stop", "with"):
    pid = os.fork()
    if pid == 0:
        if how == "stop":
            app.stop()
        elif how == "with":  # the child is not the primary: the parent is
            try:
                with app:
                    sys.exit(3)
            except tcbon.ProcessExists as exc:
                assert exc.pid == os.getppid()
        sys.exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert app.is_primary and app.running and os.path.exists(app.pid_file)
    assert tcbon.Process(name, app_dir=app_dir).info()["pid"] == os.getpid()
    try:
        tcbon.Process(name, app_dir=app_dir).start()
        raise SystemExit("a second primary started beside the first after %s" % how)
    except tcbon.ProcessExists:
        pass
app.stop()
print("ok")
