"""The barriers of the child programs here: with GO_FILE set, a program
waits (30 s at most) until that file exists, so that launches start at one
moment; a thread of a program waits until its primary answers. A program
imports it from its own folder (python children/x.py puts that folder first
on sys.path)."""
import os
import time


def wait_for_go():
    """Return once GO_FILE exists (at once without GO_FILE; after 30 s at most)."""
    go = os.environ.get("GO_FILE")
    if go:
        deadline = time.monotonic() + 30
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.001)


def wait_until_answered(name, app_dir):
    """Return once a primary of name in app_dir answers (after 20 s at most)."""
    import tcbon
    client = tcbon.Process(name, app_dir=app_dir, timeout=5)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            client.info()
            return
        except tcbon.Error:
            time.sleep(0.01)
