"""argv NAME APP_DIR: a primary of NAME in APP_DIR that makes the file
APP_DIR/held once it is the primary, then sleeps until ended (600 s at most).
Run as root by taken_by_root_setup.sh.
"""
import os
import sys
import time

import tcbon

tcbon.Process(sys.argv[1], app_dir=sys.argv[2]).start()
open(os.path.join(sys.argv[2], "held"), "w").close()
time.sleep(600)
