"""argv EXAMPLE APP_DIR PATH...: the UI example's app, whose toolkit then gets
the documents as macOS delivers them to a running app: Tk calls the Tcl
command ::tk::mac::OpenDocument, Qt's Cocoa plugin sends a QFileOpenEvent;
then a click on its Dock icon (issue 28): Tk calls ::tk::mac::ReopenApplication,
Qt changes the application's state to active. Prints DELIVERED, then REOPENED
and what the handler said to that launch with no files.
"""
import importlib.util
import sys

example, app_dir, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
spec = importlib.util.spec_from_file_location("example", example)
assert spec is not None and spec.loader is not None, example
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
app = module.FileList(app_dir=app_dir)


def finder_opens():
    if hasattr(app, "root"):
        app.root.tk.call("::tk::mac::OpenDocument", *paths)
        said = app.root.tk.call("::tk::mac::ReopenApplication")  # a Dock click
    else:
        from PySide6 import QtCore, QtGui
        for path in paths:
            QtCore.QCoreApplication.sendEvent(app.qapp, QtGui.QFileOpenEvent(path))
        # What Qt's Cocoa plugin calls on a Dock click: connected on macOS only.
        said = app.reopened(QtCore.Qt.ApplicationState.ApplicationActive)
    print("DELIVERED", flush=True)
    print("REOPENED", said.strip(), flush=True)


def run():
    if hasattr(app, "root"):
        app.root.after(100, finder_opens)
        app.root.mainloop()
    else:
        from PySide6 import QtCore
        QtCore.QTimer.singleShot(100, finder_opens)
        app.qapp.exec()


sys.exit(app.main(argv=[example], run=run))
