"""argv NAME APP_DIR: a DCC host's UI thread: a tool's primary whose handlers
run there (MainThreadExecutor), then the tool launched again from the same
thread, as a shelf button clicked twice does; prints what happened.
"""
import sys
import threading

import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
executor = tcbon.MainThreadExecutor()
tool = tcbon.Process(name, app_dir=app_dir, executor=executor)
tool.on_stop = lambda: print("on_stop on the UI thread",
                             threading.current_thread() is threading.main_thread())


@tool.on("second-instance")
def again(event):
    on_ui = threading.current_thread() is threading.main_thread()
    text = "again %s on the UI thread %s\n" % (event["argv"][1:], on_ui)
    return {"exit_code": 5, "stdout": text}


tool.start()
for timeout in (10, None):  # over HTTP it would wait for itself: Timeout (6), or forever
    code = tcbon.Process(name, app_dir=app_dir).main(["tool", "x"], timeout=timeout)
    print("main", code)
successor = tcbon.Process(name, app_dir=app_dir, executor=executor)
successor.start(replace=True, timeout=10)
print("replaced", successor.is_primary, tool.is_primary)
successor.stop()
