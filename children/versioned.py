"""argv NAME APP_DIR VERSION MARK: main() of an app of that version (replacing an
older one if REPLACE=older) that keeps the MARK of each launch it handled and
hands them on (on_handover, which prints HANDOVER and takes HANDOVER_DELAY s).
Env: GO_FILE (start barrier).
"""
import json
import os
import sys
import threading
import time

import barrier
import tcbon

name, app_dir, version, mark = sys.argv[1:5]
barrier.wait_for_go()
opened: list = []
lock = threading.Lock()


class App(tcbon.Process):
    def on_start(self):
        opened.extend((self.handed_over or {}).get("opened", []))
        print("PRIMARY", version, json.dumps(self.handed_over), flush=True)

    def on_handover(self):
        print("HANDOVER", flush=True)
        time.sleep(float(os.environ.get("HANDOVER_DELAY", 0)))
        with lock:
            return {"opened": list(opened), "from": version}


app = App(name, app_dir=app_dir, timeout=30, version=version)


@app.on("second-instance")
def second(event):
    with lock:
        opened.append(event["argv"][4])
    return {"stdout": "%s handled by %s\n" % (event["argv"][4], version)}


@app.on("opened")
def listing(event):
    with lock:
        return {"opened": list(opened), "version": version, "pid": os.getpid()}


code = app.main(replace=os.environ.get("REPLACE") or False)
print("EXIT", code, flush=True)
sys.exit(code)
