"""argv NAME APP_DIR: a primary in run_forever() in a program that set its own
signal wake-up descriptor before (as asyncio does). Once the primary answers,
one of its threads sends SIGUSR2 (a no-op handler here), then SIGTERM, to the
process. Prints the signal numbers that reached the program's own descriptor
while tcbon waited, and whether that descriptor was set again afterwards.
"""
import os
import signal
import sys
import threading
import time

import barrier
import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
read, write = os.pipe()
os.set_blocking(read, False)
os.set_blocking(write, False)
signal.set_wakeup_fd(write)
signal.signal(signal.SIGUSR2, lambda signum, frame: None)
app = tcbon.Process(name, app_dir=app_dir, timeout=5)


def signal_it():
    barrier.wait_until_answered(name, app_dir)
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


threading.Thread(target=signal_it, daemon=True).start()
app.run_forever()
print("REACHED", sorted(set(os.read(read, 64))), flush=True)
print("RESTORED", signal.set_wakeup_fd(-1) == write, flush=True)
