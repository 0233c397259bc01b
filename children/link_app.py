"""argv NAME APP_DIR LOG -- LINK: the app that a registered link or file starts. Every
launch goes through app.main(); the second-instance handler (the primary's own launch
included) appends {"argv": what followed LOG, "primary", "pid"} to LOG.
"""
import json
import os
import sys

import tcbon

name, app_dir, log = sys.argv[1:4]
app = tcbon.Process(name, app_dir=app_dir, timeout=30)


@app.on("second-instance")
def opened(event):
    with open(log, "a") as f:
        f.write(json.dumps({"argv": event["argv"][4:], "primary": bool(event.get("primary")),
                            "pid": os.getpid()}) + "\n")


sys.exit(app.main())
