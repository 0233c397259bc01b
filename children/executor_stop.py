"""Issue 19's findings: a script's loop with a MainThreadExecutor of its main
thread, argv NAME APP_DIR HOW STOP. HOW: "run_forever" or "main" (without run).
STOP: "thread" (app.stop() from another thread once it answers) or "handler"
(a 'quit' event, handled on the main thread, calls app.stop()). Prints PRIMARY
pid from on_start, then RETURNED, the seconds since app.stop() was called, and
main()'s exit code (0 for run_forever()).
"""
import os
import sys
import threading
import time

import tcbon

name, app_dir, how, stop = sys.argv[1:5]
app = tcbon.Process(name, app_dir=app_dir, executor=tcbon.MainThreadExecutor())
app.on_start = lambda: print("PRIMARY", os.getpid(), flush=True)
asked: list = []


def stop_now():
    asked.append(time.monotonic())
    app.stop()


@app.on("quit")
def quit_(event):
    stop_now()
    return {"on_main": threading.current_thread() is threading.main_thread()}


def once_it_answers():
    client = tcbon.Process(name, app_dir=app_dir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            client.info(timeout=1)
            break
        except tcbon.Error:
            time.sleep(0.01)
    stop_now()


if stop == "thread":
    threading.Thread(target=once_it_answers, daemon=True).start()
if how == "main":
    code = app.main([])
else:
    app.run_forever()
    code = 0
print("RETURNED %.3f %d" % (time.monotonic() - asked[0], code), flush=True)
