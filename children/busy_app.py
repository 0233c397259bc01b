"""argv NAME APP_DIR LOG MARK HOLD: main() of an app whose handlers run one at a
time (an executor of one thread, as a UI loop runs them); its launch handler
appends "START MARK" to LOG, then with HOLD "hold" waits until LOG.MARK exists
(60 s at most), then appends "DONE MARK" (issue 29).
The launch's timeout comes from TCBON_TIMEOUT, as an app's user would set it.
"""
import concurrent.futures
import os
import sys
import time

import tcbon

name, app_dir, log = sys.argv[1:4]
app = tcbon.Process(name, app_dir=app_dir, executor=concurrent.futures.ThreadPoolExecutor(1))


def note(line):
    with open(log, "a") as f:
        f.write(line + "\n")


@app.on("second-instance")
def launched(event):
    mark, hold = event["argv"][4], event["argv"][5] == "hold"
    note("START " + mark)
    deadline = time.monotonic() + 60
    while hold and not os.path.exists(log + "." + mark) and time.monotonic() < deadline:
        time.sleep(0.01)
    note("DONE " + mark)
    return {"stdout": "handled %s\n" % mark}


sys.exit(app.main())
