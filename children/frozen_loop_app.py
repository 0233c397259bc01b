"""The frozen app of the double Ctrl-C test (built by PyInstaller): main() with
its own loop, in Python (a KeyboardInterrupt can end it), which on_stop ends too.
"""
import sys
import threading

import tcbon

app = tcbon.Process("frozen_loop", timeout=20)
stopped = threading.Event()
app.on_stop = stopped.set
sys.exit(app.main(run=stopped.wait))
