"""argv NAME APP_DIR: a GTK 3 app with one window, "tcbon: a GTK window"; a later
launch's hand-off brings it to the front (bring_to_front) and prints "raised".
Its on_stop ends the main loop; with NO_ON_STOP=1 it has no on_stop (and
prints NO ON_STOP first), and only tcbon can end the loop.
"""
import os
import sys

import gi

import tcbon

gi.require_version("Gtk", "3.0")
from gi.repository import GLib, Gtk  # noqa: E402 - once the version is chosen

name, app_dir = sys.argv[1], sys.argv[2]


def run_pending():
    executor.run_pending()
    return False  # once per wake-up


executor = tcbon.MainThreadExecutor(wake=lambda: GLib.idle_add(run_pending))
app = tcbon.Process(name, app_dir=app_dir, executor=executor)
window = None


@app.on("second-instance")
def again(event):
    tcbon.bring_to_front(window, event)
    return {"exit_code": 0, "stdout": "raised\n"}


def on_start():
    global window
    window = Gtk.Window(title="tcbon: a GTK window")
    window.set_default_size(400, 300)
    window.show_all()


app.on_start = on_start
if os.environ.get("NO_ON_STOP") == "1":
    print("NO ON_STOP", flush=True)
else:
    app.on_stop = Gtk.main_quit
sys.exit(app.main(run=Gtk.main))
