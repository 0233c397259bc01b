"""pytest plugin for the CPythons between the oldest and the newest
(.ci/run: -p subset): deselects the desktop tests, those that drive an X
display, a window manager, GTK, Qt, Wayland or Blender. What they check is
the desktop's side of tcbon, the same on every Python; the oldest, the
default and the newest CPython and PyPy run them, and these Pythons could
not require them anyway (no PySide6 or PyGObject in their virtual
environments)."""
import inspect

FIXTURES = {"display", "desktop", "wayland", "scenes"}  # Xvfb, a window manager, sway, Blender
CALLS = ("ui_env(", "gtk_python(", "xvfb(")  # a Tk or Qt example, Debian's GTK Python, Xvfb


def _desktop(item):
    if FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    function = getattr(item, "function", None)
    return function is not None and any(call in inspect.getsource(function) for call in CALLS)


def pytest_collection_modifyitems(config, items):
    dropped = [item for item in items if _desktop(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not _desktop(item)]
