"""argv NAME APP_DIR HOST: a host application's main thread, as Maya, Nuke or
Houdini runs it, with that host's documented main-thread functions standing
in for the host (simulated: never tcbon); prints what the handlers saw.
"""
import queue
import sys
import threading
import types
from typing import Any

import tcbon

name, app_dir, host = sys.argv[1:4]
calls: queue.Queue = queue.Queue()  # what the host's main thread runs next


def with_result(fn, *args, **kwargs):  # blocks the caller until the main thread ran it
    if threading.current_thread() is threading.main_thread():
        return fn(*args, **kwargs)
    done = queue.Queue()

    def run():
        try:
            done.put((True, fn(*args, **kwargs)))
        except Exception as exc:  # noqa: BLE001 - raised again on the caller's thread
            done.put((False, exc))
    calls.put(run)
    ok, value = done.get()
    if not ok:
        raise value
    return value


def later(fn, *args, **kwargs):
    calls.put(lambda: fn(*args, **kwargs))


module = {"maya": "maya.utils", "nuke": "nuke", "houdini": "hdefereval"}[host]
fake: Any = types.ModuleType(module)  # given what the host's own module has
sys.modules[module] = fake
if host == "nuke":
    fake.executeInMainThreadWithResult = lambda call, args=(), kwargs={}: with_result(
        call, *args, **kwargs)
    fake.executeInMainThread = lambda call, args=(), kwargs={}: later(call, *args, **kwargs)
else:
    fake.executeInMainThreadWithResult, fake.executeDeferred = with_result, later
if host == "maya":
    maya: Any = types.ModuleType("maya")
    maya.utils = fake
    sys.modules["maya"] = maya
main = threading.main_thread()
app = tcbon.Process(name, app_dir=app_dir, executor=getattr(tcbon.HostExecutor, host)())
app.on_stop = lambda: print("on_stop on main", threading.current_thread() is main)
app.on("where")(lambda event: {"main": threading.current_thread() is main})


def boom(event):
    raise ValueError("the host says no")


app.on("boom")(boom)
app.start()
seen: list = []


def client():
    other = tcbon.Process(name, app_dir=app_dir, timeout=20)
    seen.append(other.send("event", {"name": "where"})["main"])
    try:
        other.send("event", {"name": "boom"})
    except tcbon.RequestError as exc:
        seen.append("ValueError: the host says no" in str(exc))
    other.stop()


worker = threading.Thread(target=client)
worker.start()
while worker.is_alive() or not calls.empty():  # the host's main loop
    try:
        calls.get(timeout=0.05)()
    except queue.Empty:
        pass
print(seen, app.running)
