"""argv NAME APP_DIR GO: a primary whose handlers run on its main thread (a
MainThreadExecutor), whose loop starts only once GO exists, as a GUI's timer
starts late (issue 29); prints STARTED once start() returned.
"""
import os
import sys
import time

import tcbon

name, app_dir, go = sys.argv[1:4]
app = tcbon.Process(name, app_dir=app_dir, executor=tcbon.MainThreadExecutor())
app.on("ping")(lambda event: {"pid": os.getpid()})
app.start()
print("STARTED", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.01)
app.run_forever()  # runs the executor's calls on this thread until stopped
