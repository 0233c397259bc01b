"""Issue 23: the app that start= and --start run. argv NAME APP_DIR RECORD: appends
STARTED pid to RECORD when run (each run, primary or not), then main(); as the
primary, answers 'hit' by appending HIT n to RECORD and replying its pid and n.
A later launch of it hands over (exit 0). Env: EXIT_AT_ONCE=code exits at once,
INSTANCES=1 makes it an app of several instances.
"""
import os
import sys
import threading

import tcbon

name, app_dir, record = sys.argv[1:4]
if os.environ.get("EXIT_AT_ONCE"):
    sys.exit(int(os.environ["EXIT_AT_ONCE"]))
writing = threading.Lock()


def note(line):
    with writing, open(record, "a") as f:
        f.write(line + "\n")


note("STARTED %d" % os.getpid())
app = tcbon.Process(name, app_dir=app_dir, timeout=30,
                    instances=True if os.environ.get("INSTANCES") else None)


@app.on("hit")
def hit(event):
    note("HIT %s" % event["n"])
    return {"pid": os.getpid(), "n": event["n"]}


sys.exit(app.main())
