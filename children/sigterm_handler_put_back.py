"""argv NAME APP_DIR: the app's own SIGTERM handler survives run_forever() and
main(), including a failing on_start; prints 'ok'.
"""
import os
import signal
import sys
import threading

import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
called: list = []


def mine(*_):
    called.append(1)


signal.signal(signal.SIGTERM, mine)
p = tcbon.Process(name, app_dir=app_dir)


def failing_start():
    raise RuntimeError("no config")


p.on_start = failing_start
try:
    p.run_forever()
except RuntimeError:
    pass
assert signal.getsignal(signal.SIGTERM) is mine and not p.running

p.on_start = lambda: os.kill(os.getpid(), signal.SIGTERM)  # stop at once
p.run_forever()
assert signal.getsignal(signal.SIGTERM) is mine and not p.running
assert called == [], "the app's own handler ran while tcbon's was in place"

stopped = threading.Event()  # main() with the app's own loop: the same
p.on_stop = stopped.set
assert p.main([], run=lambda: stopped.wait(20)) == 0
assert stopped.is_set() and signal.getsignal(signal.SIGTERM) is mine and not p.running
assert called == []
os.kill(os.getpid(), signal.SIGTERM)
assert called == [1]
print("ok")
