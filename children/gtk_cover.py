"""A full-screen GTK 3 window, "tcbon: cover", with a text field to type in."""
import gi

gi.require_version("Gtk", "3.0")
from gi.repository import Gtk  # noqa: E402 - once the version is chosen

window = Gtk.Window(title="tcbon: cover")
window.move(0, 0)
window.set_default_size(1024, 768)
window.add(Gtk.Entry())
window.connect("destroy", Gtk.main_quit)
window.show_all()
Gtk.main()
