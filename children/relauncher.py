"""argv NAME APP_DIR DONE_FILE: a user launching the app again and again, fast:
Process.main() of a new object each time (one that becomes the primary serves
until stopped), until DONE_FILE exists. Prints FAILED, the exit code and what the
launch said, for each launch that did not return 0, then "launches N".
"""
import io
import os
import sys

import tcbon

name, app_dir, done = sys.argv[1:4]
launches = 0
while not os.path.exists(done):
    said = io.StringIO()  # what the launch says on stderr
    stderr, sys.stderr = sys.stderr, said
    try:
        code = tcbon.Process(name, app_dir=app_dir, timeout=10).main(["app", str(launches)])
    finally:
        sys.stderr = stderr
    launches += 1
    if code != 0:
        print("FAILED", code, said.getvalue().strip().replace("\n", " | "), flush=True)
print("launches", launches, flush=True)
