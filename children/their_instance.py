"""argv NAME APP_DIR, as another user: an instance of NAME (instances=3) in APP_DIR,
made readable by all, that answers every launch and event; prints READY, then
serves until its stdin closes (issue 27, finding 1).
"""
import os
import sys

import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
app = tcbon.Process(name, app_dir=app_dir, instances=3)
app.on("second-instance")(lambda event: {"stdout": "theirs\n", "exit_code": 0})
app.on("echo")(lambda event: {"theirs": True})
app.start()
os.chmod(app_dir, 0o755)
for each in os.listdir(app_dir):
    os.chmod(os.path.join(app_dir, each), 0o644)
print("READY", flush=True)
sys.stdin.read()
app.stop()
