"""The start barrier of the child programs here: with GO_FILE set, a program
waits (30 s at most) until that file exists, so that launches start at one
moment. A program imports it from its own folder (python children/x.py puts
that folder first on sys.path)."""
import os
import time


def wait_for_go():
    """Return once GO_FILE exists (at once without GO_FILE; after 30 s at most)."""
    go = os.environ.get("GO_FILE")
    if go:
        deadline = time.monotonic() + 30
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.001)
