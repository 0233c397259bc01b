"""argv NAME APP_DIR: run_forever(), and SIGBREAK raised in this process once it
serves (what console close, Ctrl-Break and logoff deliver on Windows); prints
what happened. Windows only.
"""
import signal
import sys
import threading

import tcbon

name, app_dir = sys.argv[1], sys.argv[2]
SIGBREAK = signal.SIGBREAK  # type: ignore[attr-defined]  # Windows'
started = threading.Event()


class App(tcbon.Process):
    def on_start(self):  # stop signals are handled from here on
        started.set()

    def on_stop(self):
        print("on_stop ran", flush=True)


app = App(name, app_dir=app_dir)


def console_closed():
    if started.wait(20):
        signal.raise_signal(SIGBREAK)  # novermin - its test runs on 3.8+


threading.Thread(target=console_closed).start()
app.run_forever()
print("returned", app.running, signal.getsignal(SIGBREAK) is signal.default_int_handler
      or signal.getsignal(SIGBREAK) == signal.SIG_DFL)
