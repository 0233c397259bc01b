"""argv NAME OUR_APP_DIR, as another user: its own primary of NAME works; ours is
refused as owned by someone else; prints what it saw.
"""
import os
import sys

import tcbon

name = sys.argv[1]
p = tcbon.Process(name)
p.start()
try:
    print(p.is_primary, tcbon.Process(name).info()["pid"] == os.getpid())
finally:
    p.stop()
try:
    tcbon.Process(name, app_dir=sys.argv[2]).send("event", {"name": "echo"})
except tcbon.StateError as exc:
    print("StateError", exc.path == sys.argv[2], "owned by uid 0" in str(exc))
