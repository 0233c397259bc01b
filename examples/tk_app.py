"""A Tk app with one window: later launches open their files in it.

    python examples/tk_app.py notes.txt     # a window listing notes.txt
    python examples/tk_app.py todo.txt      # todo.txt shows up in that window,
                                            # which comes to the front; this
                                            # launch exits with its exit code

A launch naming a missing file exits with code 2 and says so on stderr, as
the running window decided. Stop it by closing the window or with
``python -m tcbon tcbon-example-tk stop``.
"""
import os
import platform
import sys
import tkinter as tk

import tcbon


class FileList(tcbon.Process):
    """The primary owns a Tk window; handlers run on Tk's thread."""

    def __init__(self, **kwargs):
        executor = tcbon.MainThreadExecutor(wake=self.wake)
        super().__init__('tcbon-example-tk', executor=executor, **kwargs)
        self.root = None

    def wake(self):
        # Called from a server thread: CPython's tkinter hands the event to
        # Tk's thread. PyPy's cannot be called from other threads at all;
        # there on_start polls instead.
        try:
            self.root.event_generate('<<tcbon-wake>>', when='tail')
        except (RuntimeError, NotImplementedError, tk.TclError):
            pass  # the main loop is not running yet (on_start drains), or PyPy

    def poll(self):
        self.executor.run_pending()
        if self.root is not None:  # not if a remote stop just closed the window
            self.root.after(50, self.poll)

    def setup_wsgi(self, wsgi):
        @wsgi.route('/files')
        def files():
            # Read the widgets themselves, on Tk's thread.
            read = self.executor.submit(lambda: {'files': list(self.listbox.get(0, 'end')),
                                                 'title': self.root.title()})
            return read.result(10)

    def on_start(self):
        self.root = tk.Tk()
        self.root.title('tcbon: one window for every launch')
        self.listbox = tk.Listbox(self.root, width=80, height=15)
        self.listbox.pack(fill='both', expand=True)
        self.root.bind('<<tcbon-wake>>', lambda _: self.executor.run_pending())
        self.root.protocol('WM_DELETE_WINDOW', self.closed)
        # macOS sends a document opened in the Finder to the running app as
        # an Apple Event (not as a launch's argv); Tk calls this for it.
        self.root.createcommand('::tk::mac::OpenDocument', lambda *paths: self.deliver(paths))
        # A click on the running app's Dock icon is a "reopen" Apple Event, not
        # a launch: it reaches on_second_instance as a launch that names no file.
        self.root.createcommand('::tk::mac::ReopenApplication', self.reopen)
        self.root.after_idle(self.executor.run_pending)
        if platform.python_implementation() != 'CPython':
            self.root.after(50, self.poll)

    def reopen(self):
        """macOS: the Dock icon clicked while the app runs: a launch with no
        files (the window comes to the front). Returns what it said."""
        return self.deliver([]).get('stdout', '')

    def closed(self):
        """The user closed the window: the main loop ends, and main() stops."""
        self.root.destroy()
        self.root = None

    def on_stop(self):
        if self.root is not None:  # a remote stop, or a signal: close the window
            self.closed()

    def on_second_instance(self, event):
        """Every launch's files, this first one's too (event['primary'])."""
        names = event['argv'][1:]
        if names[:1] == ['--']:  # what follows is data, never options (deliver())
            names = names[1:]
        paths, missing = self.open_files(event['cwd'], names)
        if not event['primary']:
            tcbon.bring_to_front(self.root, event)  # restored, raised, focused
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
        for path in paths:
            self.listbox.insert('end', path)
        return paths, missing


if __name__ == '__main__':
    app = FileList()
    try:
        sys.exit(app.main(run=lambda: app.root.mainloop()))
    except tk.TclError as exc:  # no display ($DISPLAY), most likely: one line, exit 1
        sys.exit('tk_app: %s' % exc)
