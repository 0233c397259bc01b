"""argv NAME APP_DIR: main() after the GO_FILE barrier (the test deletes the
working directory meanwhile); the second-instance handler prints CWD and the
event's cwd as JSON, for the first launch's own event too.
"""
import json
import sys

import barrier
import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
barrier.wait_for_go()
app = tcbon.Process(name, app_dir=app_dir, timeout=20)
app.on("second-instance")(lambda event: print("CWD", json.dumps(event["cwd"]), flush=True))
sys.exit(app.main())
