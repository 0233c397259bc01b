"""argv NAME APP_DIR: a script's loop (Blender --background, a command-line
tool): run_forever() with a MainThreadExecutor of the main thread runs the
handlers there until a stop; prints what happened.
"""
import sys
import threading
import time

import tcbon

name, app_dir = sys.argv[1:3]
main = threading.main_thread()
app = tcbon.Process(name, app_dir=app_dir, executor=tcbon.MainThreadExecutor())
app.on("where")(lambda event: {"main": threading.current_thread() is main})
app.on_stop = lambda: print("on_stop on main", threading.current_thread() is main, flush=True)


def client():
    other = tcbon.Process(name, app_dir=app_dir, timeout=20)
    deadline = time.monotonic() + 20
    while not other.running and time.monotonic() < deadline:
        time.sleep(0.01)
    print("handler on main", other.send("event", {"name": "where"})["main"], flush=True)
    other.stop()


threading.Thread(target=client).start()
app.run_forever()
print("returned", app.running)
