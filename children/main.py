"""argv NAME APP_DIR: sys.exit(app.main()), printing PRIMARY pid if it becomes the
primary. Env: GO_FILE (start barrier), TIMEOUT.
"""
import os
import sys

import barrier
import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
barrier.wait_for_go()
app = tcbon.Process(name, app_dir=app_dir, timeout=float(os.environ.get("TIMEOUT", 10)))
app.on_start = lambda: print("PRIMARY", os.getpid(), flush=True)
sys.exit(app.main())
