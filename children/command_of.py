"""argv HOW: prints the command this launch would register (HOW: frozen fakes
sys.frozen; run as a script, as python -m, or with python -c).
"""
import json
import sys

import tcbon

if sys.argv[1:] == ["frozen"]:
    sys.frozen = True  # type: ignore[attr-defined]  # as PyInstaller sets it
try:
    print(json.dumps(tcbon._launch_command()))
except ValueError as exc:
    print(json.dumps(str(exc)))
