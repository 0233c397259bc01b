"""argv NAME APP_DIR VERSION FOLDER ROUNDS: for each round R, once FOLDER/go.R
exists, start(replace='older') of a new object of that version (prints "R
PRIMARY" or "R EXISTS", or "R ERROR ..."); once FOLDER/end.R exists, stops it if
it is still the primary and prints "R DONE".
"""
import os
import sys
import time

import tcbon

name, app_dir, version, folder, rounds = sys.argv[1:6]


def await_file(path):
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit("no %s within 60 s" % path)
        time.sleep(0.001)


for r in range(int(rounds)):
    await_file(os.path.join(folder, "go.%d" % r))
    app = tcbon.Process(name, app_dir=app_dir, version=version, timeout=30)
    try:
        app.start(replace="older")
        print(r, "PRIMARY", flush=True)
    except tcbon.ProcessExists:
        print(r, "EXISTS", flush=True)
    except tcbon.Error as exc:
        print(r, "ERROR", exc, flush=True)
    await_file(os.path.join(folder, "end.%d" % r))
    if app.is_primary:
        app.stop()
    print(r, "DONE", flush=True)
