"""argv NAME APP_DIR VERSION MARK [N], the app of issue 30's model: main() of that
version (replacing an older one if REPLACE=older; N or INSTANCES=N: at most N
instances), with MARK as its project; 'who' answers its pid, instance id,
version and project. Env: GO_FILE (start barrier), TIMEOUT.
"""
import os
import sys

import barrier
import tcbon

name, app_dir, version, mark = sys.argv[1:5]
barrier.wait_for_go()
limit = sys.argv[5] if len(sys.argv) > 5 else os.environ.get("INSTANCES")
app = tcbon.Process(name, app_dir=app_dir, timeout=float(os.environ.get("TIMEOUT", 5)),
                    instances=int(limit or 0) or None, version=version)
app.describe(project=mark)
app.on("who")(lambda event: {"pid": os.getpid(), "id": app.instance_id, "version": version,
                             "project": mark})
app.on("second-instance")(lambda event: None)
sys.exit(app.main(replace=os.environ.get("REPLACE") or False))
