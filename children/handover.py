"""argv NAME APP_DIR: a later launch: main() with forward_stdin and a forward_env
of SHOT_* and PROJECT; prints its exit code, then what a child it starts
afterwards sees of the activation tokens.
"""
import subprocess
import sys

import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
app = tcbon.Process(name, app_dir=app_dir, forward_env=["SHOT_*", "PROJECT"])
code = app.main(["app", "-"], forward_stdin=True)
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get("
                        "'XDG_ACTIVATION_TOKEN'), os.environ.get('DESKTOP_STARTUP_ID'))"],
                       capture_output=True, text=True)
print("exit", code, "child sees", child.stdout.strip())
