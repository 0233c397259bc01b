"""argv NAME APP_DIR: an app with a 'ping' handler. As the primary, run_forever()
(prints PRIMARY pid, then ON_STOP, RETURNED); as a later launch, one 'ping' (prints
EXISTS pid, REPLY json). Env: GO_FILE (start barrier), ON_START_DELAY, ON_STOP_DELAY,
HANDLER_DELAY, TIMEOUT, NOFILE (open-file limit), APP_FILES (files the app keeps open),
SCOPE (the Process' scope), MUTEX (the Process' mutex).
"""
import faulthandler
import json
import os
import signal
import sys
import time

import barrier
import tcbon

if hasattr(signal, "SIGUSR1"):  # finish() asks a child that hangs for its stacks
    faulthandler.register(signal.SIGUSR1, all_threads=True)
name, app_dir = sys.argv[1], sys.argv[2]
barrier.wait_for_go()

if os.environ.get("NOFILE"):  # an open-file limit such as macOS's default, 256
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(os.environ["NOFILE"]), hard))


class App(tcbon.Process):
    def on_start(self):
        # Kept open while the app runs: what an app's own open files cost.
        self.files = [open(os.devnull)  # noqa: SIM115
                      for _ in range(int(os.environ.get("APP_FILES", 0)))]
        print("PRIMARY", os.getpid(), flush=True)
        time.sleep(float(os.environ.get("ON_START_DELAY", 0)))

    def on_stop(self):
        print("ON_STOP", flush=True)
        time.sleep(float(os.environ.get("ON_STOP_DELAY", 0)))


app = App(name, app_dir=app_dir, timeout=float(os.environ.get("TIMEOUT", 10)),
          scope=os.environ.get("SCOPE", "user"), mutex=os.environ.get("MUTEX"))


@app.on("ping")
def ping(event):
    if os.environ.get("HANDLER_DELAY"):
        print("HANDLING", flush=True)
        time.sleep(float(os.environ["HANDLER_DELAY"]))
    return {"pid": os.getpid(), "echo": event.get("data")}


try:
    app.run_forever()
    print("RETURNED", flush=True)
except tcbon.ProcessExists as exc:
    print("EXISTS", exc.pid, flush=True)
    print("REPLY", json.dumps(app.send("event", {"name": "ping", "data": os.getpid()})),
          flush=True)
