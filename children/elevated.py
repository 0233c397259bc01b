"""argv NAME USER_HOME, as root with a user's HOME and XDG_DATA_HOME (sudo -E): a
primary of the default app_dir started and stopped (prints its app_dir), then
main() with an app_dir in the user's home (prints its exit code).
"""
import os
import sys

import tcbon

name, home = sys.argv[1], sys.argv[2]
with tcbon.Process(name) as app:
    print(app.app_dir, flush=True)
print(tcbon.Process(name, app_dir=os.path.join(home, "mine")).main(run=lambda: None))
