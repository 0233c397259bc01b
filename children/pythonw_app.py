"""argv NAME APP_DIR LOG ...: sys.exit(app.main()); the primary's second-instance
handler appends [argv[4:], whether its sys.stdout is None] to LOG, then answers
some stdout (for a launch that has nowhere to write it) and exit code 3 to a launch
with arguments (0 to the first launch's own, which main() hands it too).
"""
import json
import sys

import tcbon

name, app_dir, log = sys.argv[1:4]
app = tcbon.Process(name, app_dir=app_dir, timeout=30)


@app.on("second-instance")
def second(event):
    with open(log, "a") as f:
        f.write(json.dumps([event["argv"][4:], sys.stdout is None]) + "\n")
    return {"exit_code": 3 if event["argv"][4:] else 0, "stdout": "handled\n"}


sys.exit(app.main())
