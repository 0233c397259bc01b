"""argv FOLDER, run with python -I -S (nothing else on sys.path): imports tcbon
from FOLDER; no signal handler changes; prints which heavy modules it loaded.
"""
import signal
import sys

catchable = [s for s in signal.Signals  # Windows lists its console events there too
             if s.name not in ("SIGKILL", "SIGSTOP", "CTRL_C_EVENT", "CTRL_BREAK_EVENT")]
before = {s: signal.getsignal(s) for s in catchable}
sys.path.insert(0, sys.argv[1])
import tcbon  # noqa: E402, F401 - the import is what this checks, after the handlers' state

assert {s: signal.getsignal(s) for s in catchable} == before
heavy = {"http.server", "urllib.request", "logging", "argparse", "json", "socket"}
print(sorted(heavy & set(sys.modules)))
