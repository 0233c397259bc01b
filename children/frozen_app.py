"""The frozen app (built by PyInstaller): main() with a handler that relays an
exit code and stdout.
"""
import sys

import tcbon

app = tcbon.Process("frozen_app", timeout=20)


@app.on("second-instance")
def second(event):
    if event["primary"]:  # its own launch: nothing to say
        return None
    return {"exit_code": 3, "stdout": "handled %s\n" % " ".join(event["argv"][1:])}


sys.exit(app.main())
