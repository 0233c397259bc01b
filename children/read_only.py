"""argv APP_DIR...: start() in each; prints whether the StateError names the path."""
import sys

import tcbon

for app_dir in sys.argv[1:]:
    try:
        tcbon.Process("x", app_dir=app_dir).start()
        print("started")
    except tcbon.StateError as exc:  # names the directory, or the file it could not create
        print(exc.path.startswith(app_dir), exc.path in str(exc))
