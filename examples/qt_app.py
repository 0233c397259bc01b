"""A Qt (PySide6) app with one window: later launches open their files in it.

    pip install PySide6-Essentials
    python examples/qt_app.py notes.txt     # a window listing notes.txt
    python examples/qt_app.py todo.txt      # todo.txt shows up in that window,
                                            # which comes to the front; this
                                            # launch exits with its exit code

A launch naming a missing file exits with code 2 and says so on stderr.
Stop it by closing the window or with ``python -m tcbon tcbon-example-qt stop``.
"""
import os
import sys

import tcbon


class FileList(tcbon.Process):
    """The primary owns a Qt window; handlers run on Qt's main thread."""

    def __init__(self, **kwargs):
        executor = tcbon.MainThreadExecutor(wake=self.wake)
        super().__init__('tcbon-example-qt', executor=executor, **kwargs)
        self.qapp = None

    def wake(self):
        # Emitted from a server thread: a queued connection runs the slot on
        # Qt's main thread, even if the event loop has not started yet.
        self.bridge.wake.emit()

    def setup_wsgi(self, wsgi):
        @wsgi.route('/files')
        def files():
            # Read the widgets themselves, on Qt's thread.
            read = self.executor.submit(lambda: {
                'files': [self.list.item(i).text() for i in range(self.list.count())],
                'title': self.window.windowTitle()})
            return read.result(10)

    def on_start(self):
        from PySide6 import QtCore, QtWidgets

        process = self

        class Bridge(QtCore.QObject):
            wake = QtCore.Signal()

            def eventFilter(self, watched, event):
                # macOS sends a document opened in the Finder to the running
                # app as an Apple Event, which Qt makes a QFileOpenEvent.
                if event.type() == QtCore.QEvent.Type.FileOpen:
                    process.deliver([event.file() or event.url().toString()])
                    return True
                return super().eventFilter(watched, event)

        self.qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
        self.bridge = Bridge()
        self.bridge.wake.connect(self.executor.run_pending, QtCore.Qt.QueuedConnection)
        self.window = QtWidgets.QMainWindow()
        self.window.setWindowTitle('tcbon: one window for every launch')
        self.list = QtWidgets.QListWidget()
        self.window.setCentralWidget(self.list)
        self.qapp.installEventFilter(self.bridge)  # macOS's documents: see Bridge
        if sys.platform == 'darwin':
            # A click on the running app's Dock icon is a "reopen" Apple Event,
            # not a launch; Qt makes it an application-state change to active
            # (as it does cmd-tab: a launch with no files only raises the window).
            self.qapp.applicationStateChanged.connect(self.reopened)
        self.window.resize(640, 360)
        self.window.show()

    def reopened(self, state):
        """macOS: the app became active (the Dock icon clicked while it
        runs): a launch with no files. Returns what it said."""
        from PySide6 import QtCore
        if state == QtCore.Qt.ApplicationState.ApplicationActive:
            return self.deliver([]).get('stdout', '')
        return ''

    def on_stop(self):
        if self.qapp is not None:  # a remote stop: end the event loop
            self.qapp.quit()

    def on_second_instance(self, event):
        """Every launch's files, this first one's too (event['primary'])."""
        names = event['argv'][1:]
        if names[:1] == ['--']:  # what follows is data, never options (deliver())
            names = names[1:]
        paths, missing = self.open_files(event['cwd'], names)
        if not event['primary']:
            tcbon.bring_to_front(self.window, event)  # restored, raised, focused
        if missing:
            return {'exit_code': 2, 'stderr': 'no such file: %s\n' % ', '.join(missing)}
        if event['primary']:
            return {'exit_code': 0}
        return {'exit_code': 0,
                'stdout': 'opened %d file(s) in the running window\n' % len(paths)}

    def open_files(self, cwd, names):
        """List the files that exist; return them and the missing ones. A
        launch from a deleted folder has no cwd (None): a relative name
        means nothing then, and is missing."""
        paths = [os.path.join(cwd, name) if cwd else name for name in names]
        missing = [path for path in paths if not (os.path.isabs(path) and os.path.exists(path))]
        paths = [path for path in paths if path not in missing]
        self.list.addItems(paths)
        return paths, missing


if __name__ == '__main__':
    app = FileList()
    sys.exit(app.main(run=lambda: app.qapp.exec()))
