"""argv NAME APP_DIR: run_forever() on a thread, stopped from a client; prints 'ok'."""
import signal
import sys
import threading
import time

import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
handler = signal.getsignal(signal.SIGTERM)
p = tcbon.Process(name, app_dir=app_dir)
thread = threading.Thread(target=p.run_forever)
thread.start()
client = tcbon.Process(name, app_dir=app_dir, timeout=20)
deadline = time.monotonic() + 20
while not client.running and time.monotonic() < deadline:
    time.sleep(0.005)
assert client.info()["pid"] == p.pid
assert signal.getsignal(signal.SIGTERM) is handler  # none installed off the main thread
client.stop()
thread.join(20)
assert not thread.is_alive() and not client.running
print("ok")
