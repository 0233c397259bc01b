"""argv NAME APP_DIR GATE: the primary of the Ctrl-C tests (issue 29), run_forever().
Prints STARTING in on_start, HANDLING argv[1:] in its second-instance handler and
SLOW in its 'slow' handler; each of those then waits until the file GATE exists
(60 s at most); on_start only with HOLD_START=1.
"""
import json
import os
import sys
import time

import tcbon

name, app_dir, gate = sys.argv[1:4]
app = tcbon.Process(name, app_dir=app_dir, timeout=60)


def gated(what):
    print(what, flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)


def on_start():
    if os.environ.get("HOLD_START"):
        gated("STARTING")


app.on_start = on_start
app.on("second-instance")(lambda event: gated("HANDLING " + json.dumps(event["argv"][1:])))
app.on("slow")(lambda event: gated("SLOW"))
app.run_forever()
