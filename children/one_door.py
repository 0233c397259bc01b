"""argv NAME APP_DIR ARGS...: main() whose second-instance handler prints each
event it gets (OPENED primary argv stdin token, and the startup id left in its
own environment), the first launch's own included; it answers 3 to itself.
"""
import json
import os
import sys

import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
app = tcbon.Process(name, app_dir=app_dir, timeout=20)


@app.on("second-instance")
def opened(event):
    print("OPENED", json.dumps([event["primary"], event["argv"][3:], event["stdin"],
                                event["activation_token"],
                                os.environ.get("DESKTOP_STARTUP_ID")]), flush=True)
    return {"exit_code": 3 if event["primary"] else 0,
            "stdout": "said to %s\n" % ("me" if event["primary"] else "you")}


sys.exit(app.main())
