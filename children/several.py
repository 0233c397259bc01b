"""Issue 22: an app of several instances, argv NAME APP_DIR LIMIT MARK. LIMIT: how
many may run ("any": no limit). main() becomes a new instance, or (every slot
held) hands MARK over to the most recently active one; an instance publishes
each MARK it was given ('marks', its own first, which is also its 'project')
and answers 'who' with its id and pid. With CHOOSE set, a launch whose MARK an
instance has as its project goes there. Env: GO_FILE (start barrier),
CHOOSE_ID (an instance id every launch chooses).
"""
import os
import sys
import threading

import barrier
import tcbon

name, app_dir, limit, mark = sys.argv[1:5]
barrier.wait_for_go()
app = tcbon.Process(name, app_dir=app_dir, timeout=30,
                    instances=True if limit == "any" else int(limit))
marks: list = []
marking = threading.Lock()  # handlers run on worker threads, at once
if os.environ.get("CHOOSE"):
    app.choose = lambda event, instances: next(
        (i for i in instances if i["meta"].get("project") == event["argv"][4]), None)
if os.environ.get("CHOOSE_ID"):  # an id that may be no instance's
    app.choose = lambda event, instances: int(os.environ["CHOOSE_ID"])


@app.on("second-instance")
def opened(event):
    with marking:
        marks.append(event["argv"][4])
        app.describe(marks=list(marks), project=marks[0])
    return {"stdout": "%s %s\n" % (event["argv"][4], app.instance_id)}


@app.on("who")
def who(event):
    return {"id": app.instance_id, "pid": os.getpid(), "project": marks[0]}


sys.exit(app.main())
