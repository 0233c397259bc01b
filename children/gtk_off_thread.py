"""A GTK 3 window raised by bring_to_front() from another thread while the
main loop runs, then from the loop's own thread; prints what each call said.
"""
import gi

from raise_it import raise_it, raise_it_from_another_thread

gi.require_version("Gtk", "3.0")
from gi.repository import GLib, Gtk  # noqa: E402 - once the version is chosen

window = Gtk.Window(title="tcbon: off its thread")
window.show_all()
said: list = []


def from_both():
    raise_it_from_another_thread(window, said)
    raise_it(window, said)
    Gtk.main_quit()


GLib.idle_add(from_both)
Gtk.main()
print(said)
