"""argv NAME APP_DIR: a primary in run_forever() whose own thread (one the app
started, which blocks no signal) takes SIGTERM, sent to that thread alone a
second after the primary answered; the main thread waits for a stop all that
while. Prints PRIMARY pid, then RETURNED once run_forever() returned.
"""
import os
import signal
import sys
import threading
import time

import barrier
import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
app = tcbon.Process(name, app_dir=app_dir, timeout=5)


def take_sigterm_here():
    barrier.wait_until_answered(name, app_dir)
    time.sleep(1.0)  # the main thread waits for the stop by now
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)


app.on_start = lambda: print("PRIMARY", os.getpid(), flush=True)
threading.Thread(target=take_sigterm_here, daemon=True).start()
app.run_forever()
print("RETURNED", flush=True)
