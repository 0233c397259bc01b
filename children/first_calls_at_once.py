"""argv NAME APP_DIR: a primary, then 8 threads whose first calls to it start at
once, while its own threads serve them; prints each thread's result and
which loader imported json (zipimporter: the standard library was a zip).
"""
import sys
import threading

import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
app = tcbon.Process(name, app_dir=app_dir, timeout=30)
app.register_event_handler("echo", lambda event: {"got": event.get("data")})
app.start()
results = [None] * 8
go = threading.Barrier(8)


def call(i):
    go.wait()
    try:
        results[i] = tcbon.Process(name, app_dir=app_dir, timeout=30).send(
            "event", {"name": "echo", "data": i})["got"]
    except Exception as exc:  # noqa: BLE001 - printed: the test shows which call failed
        results[i] = repr(exc)


threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(60)
app.stop()
print(results, type(sys.modules["json"].__loader__).__name__)
