"""A frozen app (built by PyInstaller) with a spawn pool in on_start, and
multiprocessing.freeze_support() in the right place (before main(), with
FREEZE_FIRST=1) or in the wrong one (in on_start, after main() took the lock:
every worker then starts as a launch).
"""
import multiprocessing
import os
import sys

import tcbon


def square(x):
    return x * x


if os.environ.get("FREEZE_FIRST"):
    multiprocessing.freeze_support()
app = tcbon.Process("mp_app", timeout=20)


def on_start():
    multiprocessing.freeze_support()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        print("squares", pool.map(square, range(4)), flush=True)
    app.stop()  # carried out once started


app.on_start = on_start
sys.exit(app.main())
