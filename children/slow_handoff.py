"""argv NAME APP_DIR: run_forever() of a primary whose on_start takes ON_START_DELAY
seconds (it prints PRIMARY pid first) and whose 'second-instance' handler takes
HANDLER_DELAY seconds.
"""
import os
import sys
import time

import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
app = tcbon.Process(name, app_dir=app_dir)


def on_start():
    print("PRIMARY", os.getpid(), flush=True)
    time.sleep(float(os.environ["ON_START_DELAY"]))


app.on_start = on_start
app.on("second-instance")(lambda event: time.sleep(float(os.environ["HANDLER_DELAY"])))
app.run_forever()
