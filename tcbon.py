"""tcbon: There can be only one!

Keep a single instance of a Python application alive per user, and let later
launches and local tools talk to it over an authenticated loopback HTTP API.

    import tcbon

    app = tcbon.Process('my_app')

    @app.on('ack')
    def on_ack(event):
        return {'message': 'Hello there!'}

    try:
        app.run_forever()
    except tcbon.ProcessExists:
        print(app.send('event', {'name': 'ack'}))

One file, standard library only: copy it into your project if you like.

The file, top to bottom (each section uses only those above it):

    Constants, Exceptions   protocol limits; Error and its subclasses
    Platform                _UnixPlatform / _WindowsPlatform, picked once
    Checks and waits        argument checks; _Wait, a call's one deadline
    State file              the app dir's safety; NAME.pid, written atomically
    WSGI, Server            App (routes), Request; intake, worker pool, handler
    Lock                    _Lock: the primary's, a slot's, the side locks
    Finding the primary     _Client (one HTTP exchange); _Finder (which primary,
                            for one instance or several, and how to reach it)
    The primary, Process    _Primary (lock, server, state, routes, the stop
                            sequence); Process, the front: public calls, hooks
    Optional parts          executors, desktop windows, links, command line

A launch, Process.main(): _Finder.take() takes the name's lock (or a slot's)
and _Primary.start() listens, runs on_start and publishes the state; if the
lock is held, the launch hands its argv over: _Finder.call() locates the
primary (waiting through a start-up, a stop, a replace), checks it once
connected, and _Client.exchange() sends the event, whose handler runs on the
primary's executor. Where a change goes: how a primary is found or chosen,
_Finder; what a primary does while it runs or stops, _Primary; a new public
call, Process (a few lines, delegating); an OS difference, the platform classes.
"""
from __future__ import annotations

__version__ = "0.5.1"
__all__ = [
    "App",
    "AsyncioExecutor",
    "Busy",
    "Error",
    "HTTPError",
    "HostExecutor",
    "MainThreadExecutor",
    "Process",
    "ProcessDoesNotExist",
    "ProcessExists",
    "RequestError",
    "Response",
    "StateError",
    "Timeout",
    "Unreachable",
    "UsageError",
    "abort",
    "bring_to_front",
    "default_app_dir",
    "instances",
    "jsonify",
    "main",
    "register",
    "request",
    "unregister",
]

# Modules ---------------------------------------------------------------------
# Only what a second instance needs at once: http.server, urllib.request,
# logging, json and friends load where first used (`import tcbon` stays cheap).
import _thread
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Iterable

# Constants -------------------------------------------------------------------
PROTOCOL = 1  #: Version of the state file and HTTP protocol spoken here.
DEFAULT_TIMEOUT = 5.0  #: Seconds a client call may take unless told otherwise.
TOKEN_HEADER = "X-Tcbon-Token"
NONCE_HEADER = "X-Tcbon-Nonce"  #: A client's fresh random value, which the reply proves.
PROOF_HEADER = "X-Tcbon-Proof"  #: HMAC-SHA256(token, nonce), hex: the primary knows the token.
DEADLINE_HEADER = "X-Tcbon-Deadline"  #: Seconds the sender waits; no handler starts later.
ACK_HEADER = "X-Tcbon-Ack"  #: "1": an interim "100 Continue" says the handler starts.
MAX_BODY = 1 << 20  #: Largest request body the server reads, in bytes.
MAX_HEAD = 1 << 16  #: Largest request line plus headers, in bytes.
MAX_WORKERS = 64  #: Requests handled at once; more get 503 at once.
MAX_PENDING = 256  #: Connections still sending their request (fewer if files are few).
MAX_BUFFERED = 16 << 20  #: Bytes all connections still sending their request may hold.
REQUEST_DEADLINE = 5.0  #: Seconds a client has to send its whole request.
_MAX_NAME_BYTES = 200
_MAX_INSTANCES = 1000  # the slots instances=True may use
_MAX_META = 32 << 10  # bytes of JSON of an instance's metadata (state is read up to MAX_HEAD)
_BAD_NAME_CHARS = '/\\<>:"|?*'
_DEVICE_NAMES = frozenset(["CON", "PRN", "AUX", "NUL"] + ["COM%d" % i for i in range(1, 10)]
                          + ["LPT%d" % i for i in range(1, 10)])
class _Default:
    def __repr__(self) -> str:
        return "<the Process' timeout>"


_DEFAULT: Any = _Default()  # a call's timeout when none is given
SECOND_INSTANCE = "second-instance"  #: The event a later launch hands over with.
_DEBUG, _INFO, _WARNING, _ERROR = 10, 20, 30, 40  # logging's levels, without importing it
# Exit codes of python -m tcbon and of Process.main(), one meaning each.
(EXIT_OK, EXIT_NOT_RUNNING, EXIT_USAGE, EXIT_REFUSED, EXIT_TIMEOUT, EXIT_STATE,
 EXIT_ERROR, EXIT_UNREACHABLE, EXIT_BUSY) = range(9)
# Ctrl-C ended a launch or a command-line call: the status a shell shows for a
# program that SIGINT ended (128 + 2), as for Python's own end by KeyboardInterrupt;
# said in one line, with no traceback (issue 29).
EXIT_INTERRUPTED = 130


# Exceptions ------------------------------------------------------------------
class Error(Exception):
    """Root of every exception tcbon raises on purpose."""


class ProcessExists(Error):
    """Another instance holds the lock: this one must not become primary.

    Attributes:
        name (str): the application name.
        pid (int): the primary's process id, as it published it.
        address (str): the primary's ``host:port``.
    """

    def __init__(self, message: str, name: str, pid: int, address: str) -> None:
        super().__init__(message)
        self.name, self.pid, self.address = name, pid, address


class ProcessDoesNotExist(Error):
    """No primary runs for this name (raised by get, send, stop, ...).

    Attributes:
        name (str): the application name.
        app_dir (str): the directory that was looked in.
    """

    def __init__(self, message: str, name: str, app_dir: str) -> None:
        super().__init__(message)
        self.name, self.app_dir = name, app_dir


class Timeout(Error, TimeoutError):
    """A bounded wait ran out: the primary is busy, hung, starting or stopping.

    Attributes:
        name (str): the application name.
        timeout (float): the limit that ran out, in seconds.
    """

    def __new__(cls, message: str, name: str, timeout: float) -> Timeout:
        # OSError.__new__ would read three arguments as errno, strerror, filename.
        return super().__new__(cls, message)  # type: ignore[call-arg]

    def __init__(self, message: str, name: str, timeout: float) -> None:
        super().__init__(message)
        self.name, self.timeout = name, timeout


class Busy(Timeout):
    """The primary took the request (its handler started: delivered) but
    did not answer within the timeout: it goes on, and runs it once; only
    its reply is lost (issue 29). A launch exits with EXIT_BUSY (8)."""


class Unreachable(Error, ConnectionError):
    """A primary holds the lock, but its address refuses connections: it
    runs in another network namespace (a container, a sandbox without
    network access), on another machine that shares this directory and
    this machine's id (a cloned system), or its server has died. Unlike
    Timeout, waiting longer does not help.

    Attributes:
        name (str): the application name.
        pid (int): the primary's process id, as it published it.
        address (str): the address that refused.
        host (str): the host name the primary published.
    """

    def __new__(cls, message: str, name: str, pid: Any, address: str, host: Any) -> Unreachable:
        return super().__new__(cls, message)  # type: ignore[call-arg]

    def __init__(self, message: str, name: str, pid: Any, address: str, host: Any) -> None:
        super().__init__(message)
        self.name, self.pid, self.address, self.host = name, pid, address, host


class StateError(Error):
    """The state directory or a file in it cannot be used safely.

    Attributes:
        path (str): the offending path.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class RequestError(Error):
    """The primary answered, but refused or failed the request.

    Attributes:
        status (int): the HTTP status (4xx or 5xx).
        reply: the decoded reply body (usually a dict with ``error``).
    """

    def __init__(self, message: str, status: int, reply: Any) -> None:
        super().__init__(message)
        self.status, self.reply = status, reply


class UsageError(Error, ValueError):
    """A value given to tcbon is wrong (a name, an address, a timeout, a
    URL scheme, a JSON argument, ...): nothing was done. Also a
    ValueError, as these have always been, so either catches it."""


class _CannotListen(Error):
    """The primary's server cannot listen: the guard cannot work (a
    blocked loopback, say), as with a StateError (see main's unguarded)."""


def _env_timeout() -> Any:
    """A launch's timeout from the environment, TCBON_TIMEOUT (seconds, or
    "none" for no limit), else the Process' own (issue 29).

    Raises:
        UsageError: it is set, but to neither.
    """
    text = os.environ.get("TCBON_TIMEOUT", "").strip()
    if not text:
        return _DEFAULT
    if text.lower() == "none":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise UsageError("TCBON_TIMEOUT must be a number of seconds >= 0, or none; got %r"
                         % text)
    return seconds


def _exit_code(exc: BaseException) -> int:
    """The exit code for a failure, as python -m tcbon and Process.main() give it."""
    for kind, code in ((ProcessDoesNotExist, EXIT_NOT_RUNNING), (RequestError, EXIT_REFUSED),
                       (Busy, EXIT_BUSY), (Timeout, EXIT_TIMEOUT), (StateError, EXIT_STATE),
                       (Unreachable, EXIT_UNREACHABLE), (ValueError, EXIT_USAGE)):
        if isinstance(exc, kind):
            return code
    return EXIT_ERROR


# Platform --------------------------------------------------------------------
# Two small classes with the same methods, one per platform, one picked
# once at import: the only sys.platform branch in this file. A lock is held
# by an open file description and dies with its process: nothing stale after
# kill -9, unlike shared memory (SingleApplication#190) or pid files
# (onionshare#1152). flock, not lockf: closing any other descriptor of the
# file must not release it, and the lock file is never deleted (filelock#574).
WINDOWS = sys.platform == "win32"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
# A FIFO planted where a file of ours goes would block open() until someone
# writes it (issue 27): opened without waiting, and refused unless regular.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_SAFE = _NOFOLLOW | _CLOEXEC | _BINARY | _NONBLOCK  # every open() of our files


class _Platform:
    """What tcbon needs from the system, the same on each: one subclass per
    platform, picked once below (as filelock picks UnixFileLock or
    WindowsFileLock). The sections below call these, through the names
    bound after the subclasses, and know no platform.

    Attributes:
        private_dir (dict): os.makedirs' keywords for a directory only the
            user can enter.
        reuse_address (bool): SO_REUSEADDR on the listening socket.
        wait_slice (float or None): longest wait in one call, so that
            Ctrl-C is seen (None: one wait without timeout).
        stop_signals (tuple): names of the signals that ask a primary to stop.
        signal_wake (bool): signal.set_wakeup_fd takes a pipe's descriptor.
        links (type or None): the class that registers links and file types
            here (_XdgLinks, _WindowsLinks), set where the optional parts
            define them; None where the app declares its own (macOS: its
            bundle's Info.plist).
        desktop_files (bool): links and file types are desktop files (the
            freedesktop.org specs).
    """

    private_dir: dict[str, int] = {}
    reuse_address = False
    wait_slice: float | None = None
    stop_signals: tuple[str, ...] = ("SIGTERM",)
    signal_wake = True
    links: type | None = None
    desktop_files = False

    def lock(self, fd: int, shared: bool = False) -> bool:
        """Take fd's lock without waiting: True if taken, False if another
        process holds it; other failures raise OSError. shared: a probe,
        which never makes a launch believe that a primary runs."""
        raise NotImplementedError

    def unlock(self, fd: int, shared: bool = False) -> None:
        """Release what lock(fd, shared) took."""
        raise NotImplementedError

    def allow_foreground(self, pid: int) -> None:
        """Let process pid (the primary) take the focus from this launch."""

    def machine_id(self) -> str:
        """This machine's id, stable while it runs; "" if none is found."""
        return ""

    def session_id(self) -> str:
        """The login session's id; "" if none is found."""
        return ""

    def owner_problem(self, st: os.stat_result) -> str | None:
        """Why a directory or file (its stat) is not safely ours, or None."""
        return None

    def pending_cap(self, wanted: int) -> int:
        """How many connections may be pending at once: wanted, or fewer."""
        return wanted

    def mask_stop_signals(self, block: bool) -> Any:
        """Block (or unblock) SIGINT and SIGTERM in the calling thread;
        return the mask before, for restore_signal_mask()."""
        return None

    def restore_signal_mask(self, previous: Any) -> None:
        """Put back the mask that mask_stop_signals() returned."""

    def spawn_detached(self, command: str | list[str]) -> Any:
        """Start command (a string or an argument list) in the background,
        detached from this launch: no terminal, no inherited streams or
        descriptors, its own session or process group, so that it outlives
        this launch and Ctrl-C in its terminal. Returns the Popen; raises
        OSError if it cannot be run."""
        raise NotImplementedError

    def command_line(self, argv: list[str]) -> str:
        """argv as one line that this platform's shell would split back."""
        raise NotImplementedError

    def pid_space(self) -> str | None:
        """What this process' pids are numbered in: processes whose
        pid_space() is the same can tell whether each other's pid runs
        (pid_gone); None if that cannot be known."""
        return ""

    def pid_gone(self, pid: int, started: str | None = None) -> bool:
        """True if no process of that pid runs (in this pid space): none
        does, or it ended and waits to be reaped (a zombie), or, given
        started (what pid_started() said of the one meant), the pid was
        reused by a later process. started None: not compared."""
        return False

    def pid_started(self, pid: int) -> str | None:
        """When process pid started, as every process of its pid space
        reads it while the machine runs, and as no later process of that
        pid can have it; None where the platform does not tell."""
        return None

    def hold_mutex(self, name: str) -> tuple[list[Any], str | None]:
        """Create the named mutex an installer looks for (issue 23): the
        handles to close later, and why the Global one could not be had
        (None if it could). Raises OSError if none can be created."""
        return [], None

    def release_mutex(self, handles: list[Any]) -> None:
        """Close what hold_mutex() created."""

    def die_by_signal(self, signum: int) -> None:
        """End this process as signum's default action does (killed by
        SIGTERM: what systemd takes for a clean stop), if this system can;
        else return."""

    def lock_holders(self, path: str) -> list[int] | None:
        """The pids the OS's lock table names as holding path's exclusive
        lock; None where no lock table can be read (issue 28)."""
        return None

    def end_process(self, pid: int) -> None:
        """End process pid at once (it may be stopped or hung). Raises OSError."""
        raise NotImplementedError


class _UnixPlatform(_Platform):
    """Linux, macOS and the BSDs: flock, file modes and owners."""

    private_dir = {"mode": 0o700}
    reuse_address = True  # restart on a fixed port despite TIME_WAIT
    # macOS reads them from the app bundle's Info.plist (docs/desktop.rst)
    desktop_files = sys.platform != "darwin"

    def mask_stop_signals(self, block: bool) -> Any:
        import signal
        if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - PyPy before 7.3
            return None
        return signal.pthread_sigmask(signal.SIG_BLOCK if block else signal.SIG_UNBLOCK,
                                      (signal.SIGINT, signal.SIGTERM))

    def restore_signal_mask(self, previous: Any) -> None:
        if previous is not None:
            import signal
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def die_by_signal(self, signum: int) -> None:
        # Python lets only the main thread reset a handler: the C library's
        # signal() does it from any.
        try:
            import ctypes
            libc = ctypes.CDLL(None)
            libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
            libc.signal(signum, None)  # SIG_DFL
            os.kill(os.getpid(), signum)  # taken by a thread that does not block it
            time.sleep(1.0)
        except (OSError, AttributeError, ImportError):
            pass

    def lock_holders(self, path: str) -> list[int] | None:
        try:  # Linux: "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
            with open("/proc/locks") as table:
                lines = table.read().splitlines()
        except OSError:
            return None  # macOS, the BSDs: no table a process may read
        st = os.stat(path)
        device = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        holders = []
        for line in lines:
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" and (
                    fields[5] == device and fields[4].isdigit()):
                holders.append(int(fields[4]))
        return holders

    def end_process(self, pid: int) -> None:
        import signal
        os.kill(pid, signal.SIGKILL)

    def lock(self, fd: int, shared: bool = False) -> bool:
        import fcntl
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:  # EWOULDBLOCK: held; ENOLCK, ENOTSUP...: raised
            return False
        return True

    def unlock(self, fd: int, shared: bool = False) -> None:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_UN)

    def allow_foreground(self, pid: int) -> None:
        pass  # X11 and Wayland: the activation token the event carries

    def machine_id(self) -> str:
        for path in ("/etc/machine-id", "/var/lib/dbus/machine-id",
                     "/proc/sys/kernel/random/boot_id"):  # the last: stable while it runs
            try:
                with open(path, "rb") as f:
                    return f.read(64).decode("ascii", "replace")
            except OSError:
                pass
        if sys.platform == "darwin":  # the hardware UUID: its hostname changes with the network
            try:
                import ctypes
                uuid = ctypes.create_string_buffer(16)
                wait = (ctypes.c_long * 2)(0, 0)
                if ctypes.CDLL(None).gethostuuid(uuid, wait) == 0:
                    return uuid.raw.hex()
            except (OSError, AttributeError):
                pass
        return ""

    def session_id(self) -> str:
        # logind's session, else the kernel's audit session (the same number,
        # which logind takes when there is one), else macOS' security session.
        session = os.environ.get("XDG_SESSION_ID", "")
        if not session:
            try:
                with open("/proc/self/sessionid", "rb") as f:
                    session = f.read(16).decode("ascii", "replace").strip()
            except OSError:
                pass
        if session == "4294967295":  # (u32)-1: no audit session
            session = ""
        return session or os.environ.get("SECURITYSESSIONID", "")

    def owner_problem(self, st: os.stat_result) -> str | None:
        if st.st_uid != os.geteuid():
            return "is owned by uid %d, not by you (uid %d)" % (st.st_uid, os.geteuid())
        if st.st_mode & 0o022:
            mode = st.st_mode & 0o777
            return "is writable by other users (mode %o); run chmod go-w on it" % mode
        return None

    def pending_cap(self, wanted: int) -> int:
        """Fewer under a low open-file limit (macOS's default is 256),
        leaving room for the workers and the app's own files."""
        soft = os.sysconf("SC_OPEN_MAX")  # RLIMIT_NOFILE's soft limit; -1: none
        if soft < 0:
            return wanted
        return max(8, min(wanted, (soft - MAX_WORKERS) // 2))

    def spawn_detached(self, command: str | list[str]) -> Any:
        import shlex
        import subprocess
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, close_fds=True,
                                start_new_session=True)  # setsid: no terminal, no SIGHUP

    def command_line(self, argv: list[str]) -> str:
        import shlex
        return " ".join(shlex.quote(arg) for arg in argv)

    def pid_space(self) -> str | None:
        if not sys.platform.startswith("linux"):
            return ""  # macOS, the BSDs: one numbering per machine
        try:  # Linux: each pid namespace (a container, a Flatpak sandbox) its own
            return os.readlink("/proc/self/ns/pid")
        except OSError:
            return None

    def pid_gone(self, pid: int, started: str | None = None) -> bool:
        if pid <= 0:
            return False  # 0 and -1 would name process groups
        stat = self._proc_stat(pid)
        if stat is not None:  # Linux: a zombie and a reused pid pass kill(pid, 0) (issue 27)
            return stat[0] in (b"Z", b"X") or started not in (None, self._born(stat))
        try:
            os.kill(pid, 0)  # no signal: only whether it exists
        except ProcessLookupError:
            return True
        except OSError:
            return False  # EPERM: another user's process, but it runs
        return False

    def pid_started(self, pid: int) -> str | None:
        stat = self._proc_stat(pid)
        return None if stat is None else self._born(stat)

    def _born(self, stat: list[bytes]) -> str:
        """pid_started() from /proc/PID/stat's fields: its field 22 (clock
        ticks since boot) and the boot's id, as a boot starts counting anew."""
        return "%s/%s" % (self._proc()[1], stat[19].decode("ascii", "replace"))

    def _proc_stat(self, pid: int) -> list[bytes] | None:
        """/proc/PID/stat's fields from the process' state on (field 3);
        None without such a process or a /proc that numbers them as we do."""
        if not self._proc()[0]:
            return None
        try:
            fd = os.open("/proc/%d/stat" % pid, os.O_RDONLY | _CLOEXEC)
        except OSError:
            return None
        try:
            data = os.read(fd, 1024)
        except OSError:  # ESRCH: it ended in between
            return None
        finally:
            os.close(fd)
        fields = data.rpartition(b")")[2].split()  # its name may hold ")" and spaces
        return fields if len(fields) > 19 else None

    def _proc(self) -> tuple[bool, str]:
        """Whether /proc is Linux's and numbers processes as we do (not a
        parent pid namespace's), and this boot's id; read once."""
        if not _procs:
            ours, boot = False, ""
            try:
                with open("/proc/self/stat", "rb") as f:
                    ours = f.read(32).split(b" ", 1)[0] == b"%d" % os.getpid()
                with open("/proc/sys/kernel/random/boot_id", "rb") as f:
                    boot = f.read(64).decode("ascii", "replace").strip()
            except OSError:
                pass
            _procs.append((ours, boot))
        return _procs[0]


_procs: list[tuple[bool, str]] = []


class _WindowsPlatform(_Platform):  # pragma: no cover - run by the rig (.ci/windows)
    """Windows: msvcrt byte locks, the registry, the session of the process."""

    # No mode: since 3.12.4 os.makedirs(mode=0o700) sets a protected ACL
    # (gh-118486, CVE-2024-4030); made by an elevated first run, the user
    # could never open it again. Inherit %LOCALAPPDATA%'s, as platformdirs.
    private_dir: dict[str, int] = {}
    reuse_address = False  # on Windows it lets others bind our port: cpython#85307
    wait_slice = 0.25  # a wait without timeout ignores Ctrl-C on Windows
    # Console close, Ctrl-Break and logoff arrive as SIGBREAK; SIGTERM never does.
    stop_signals = ("SIGTERM", "SIGBREAK")
    signal_wake = False  # set_wakeup_fd wants a socket here: see _wake_on_signals

    def lock(self, fd: int, shared: bool = False) -> bool:
        # msvcrt has no shared lock, and a probe that took the exclusive one
        # for a moment could make a launch believe a primary runs. Windows
        # byte locks are mandatory instead: a probe reads the locked byte,
        # which fails while another process holds it, and takes nothing.
        import errno
        import msvcrt
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            if shared:
                os.read(fd, 1)
            else:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
                if os.fstat(fd).st_size == 0:  # a byte for probes to read: written
                    os.write(fd, b"\0")  # once, under the lock; never truncated
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK):  # the UCRT's "held"
                return False
            raise
        return True

    def unlock(self, fd: int, shared: bool = False) -> None:
        import msvcrt
        if not shared:  # a probe took nothing
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]

    def allow_foreground(self, pid: int) -> None:
        # Windows' focus-stealing prevention only flashes the primary's
        # taskbar button unless the launch passes its right on (VS Code
        # PR#13255, electron#648).
        import ctypes
        ctypes.windll.user32.AllowSetForegroundWindow(pid)  # type: ignore[attr-defined]

    def machine_id(self) -> str:
        import winreg
        try:
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE,  # type: ignore[attr-defined]
                                r"SOFTWARE\Microsoft\Cryptography", 0,
                                winreg.KEY_READ | winreg.KEY_WOW64_64KEY) as key:  # type: ignore
                return str(winreg.QueryValueEx(key, "MachineGuid")[0])  # type: ignore
        except OSError:
            return ""

    def session_id(self) -> str:
        import ctypes
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        session = ctypes.c_ulong()
        if kernel32.ProcessIdToSessionId(kernel32.GetCurrentProcessId(), ctypes.byref(session)):
            return str(session.value)  # Remote Desktop and fast user switching: one each
        return ""

    def owner_problem(self, st: os.stat_result) -> str | None:
        return None  # NTFS ACLs of the profile directory do this job

    def pending_cap(self, wanted: int) -> int:
        return min(wanted, 448)  # select() takes 512 sockets on Windows

    def spawn_detached(self, command: str | list[str]) -> Any:
        import subprocess
        # A string is a command line, as CreateProcess takes it. DETACHED_PROCESS:
        # no console (so CREATE_NO_WINDOW is moot); a new group: no Ctrl-C of ours.
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, close_fds=True, creationflags=flags)

    def command_line(self, argv: list[str]) -> str:
        import subprocess
        return subprocess.list2cmdline(argv)

    def hold_mutex(self, name: str) -> tuple[list[Any], str | None]:
        # Inno Setup's AppMutex (and other installers) look for a named mutex;
        # its docs advise creating the session's (the plain name, which is
        # Local\) and Global\ one. Windows may refuse Global\ (no
        # SeCreateGlobalPrivilege in some contexts, another user's object of
        # that name): then the session's one stays, and the caller warns.
        kernel32 = _kernel32()
        handles, problem = [], None
        for full in (name, "Global\\" + name):
            handle = kernel32.CreateMutexW(None, False, full)  # not owned: only its name counts
            if handle:
                handles.append(handle)
                continue
            error = _ctypes_error()
            if not handles:
                raise error
            problem = str(error)
        return handles, problem

    def release_mutex(self, handles: list[Any]) -> None:
        kernel32 = _kernel32()
        for handle in handles:
            kernel32.CloseHandle(handle)

    def end_process(self, pid: int) -> None:
        kernel32 = _kernel32()
        handle = kernel32.OpenProcess(0x0001, False, pid)  # PROCESS_TERMINATE
        if not handle:
            raise _ctypes_error()
        try:
            if not kernel32.TerminateProcess(handle, 1):
                raise _ctypes_error()
        finally:
            kernel32.CloseHandle(handle)

    def pid_gone(self, pid: int, started: str | None = None) -> bool:
        import ctypes
        kernel32 = _kernel32()
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:  # ERROR_INVALID_PARAMETER: no such pid; access denied: it runs
            return ctypes.get_last_error() == 87  # type: ignore[attr-defined]
        try:
            code = ctypes.c_ulong()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return False
            if code.value != 259:  # STILL_ACTIVE; the object outlives the process
                return True
            # A pid is reused once no handle holds its process (issue 27).
            created = self._created(handle)
            return None not in (started, created) and created != started
        finally:
            kernel32.CloseHandle(handle)

    def pid_started(self, pid: int) -> str | None:
        kernel32 = _kernel32()
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return None
        try:
            return self._created(handle)
        finally:
            kernel32.CloseHandle(handle)

    def _created(self, handle: Any) -> str | None:
        """The creation time of the process of handle (GetProcessTimes, in
        100 ns since 1601: one clock for the whole machine), or None."""
        import ctypes
        from ctypes import wintypes
        times = [wintypes.FILETIME() for _ in range(4)]  # created, exited, kernel, user
        if not _kernel32().GetProcessTimes(handle, *[ctypes.byref(t) for t in times]):
            return None
        return str(times[0].dwHighDateTime << 32 | times[0].dwLowDateTime)


def _kernel32() -> Any:  # pragma: no cover - Windows: run by the rig (.ci/windows)
    """kernel32 through ctypes (imported only here: most apps never need it),
    with the prototypes of the calls tcbon makes, and use_last_error."""
    if _kernel32s:
        return _kernel32s[0]
    import ctypes
    from ctypes import wintypes
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.CreateMutexW.argtypes = [ctypes.c_void_p, wintypes.BOOL, wintypes.LPCWSTR]
    kernel32.CreateMutexW.restype = wintypes.HANDLE
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    kernel32.CloseHandle.restype = wintypes.BOOL
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.TerminateProcess.argtypes = [wintypes.HANDLE, wintypes.UINT]
    kernel32.TerminateProcess.restype = wintypes.BOOL
    kernel32.GetProcessTimes.argtypes = [wintypes.HANDLE] + [ctypes.POINTER(wintypes.FILETIME)] * 4
    kernel32.GetProcessTimes.restype = wintypes.BOOL
    _kernel32s.append(kernel32)
    return kernel32


_kernel32s: list[Any] = []


def _ctypes_error() -> OSError:  # pragma: no cover - Windows: run by the rig (.ci/windows)
    """The OSError of the last Windows error a ctypes call left."""
    import ctypes
    return ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]


_platform: _Platform = _WindowsPlatform() if WINDOWS else _UnixPlatform()


def _start_deaf(thread: Any) -> None:
    """Start a thread of tcbon's with SIGINT and SIGTERM blocked in it (it
    inherits the mask, and so do the threads it starts). The kernel may
    hand a process' signal to any thread that does not block it, and one
    taken by a server thread interrupts nothing: Python runs the handler
    only once the main thread runs bytecode, so a main thread asleep in a
    slow on_stop slept on through the second Ctrl-C or SIGTERM meant to
    hurry it (1 of about 75 tries under load)."""
    previous = _platform.mask_stop_signals(True)
    try:
        thread.start()
    finally:
        _platform.restore_signal_mask(previous)


_machines: list[str] = []


def _machine() -> str:
    """A short id of this machine, the same for every process while it
    runs: a home directory shared by several machines (NFS) holds one lock
    per machine, as each machine has its own loopback. Never the hostname,
    which macOS changes with the network; that only as a last resort."""
    if not _machines:
        text = _platform.machine_id()
        if not text:
            import socket
            text = socket.gethostname()
        _machines.append("".join(c for c in text.lower() if c.isalnum())[:16] or "unknown")
    return _machines[0]


def _data_home(platform: str = sys.platform) -> str:
    """The per-user data directory, as platformdirs computes it, but on
    macOS without $XDG_DATA_HOME. A pure function of the platform, so every
    branch can be tested anywhere.

    Raises:
        StateError: there is no home directory to put it in (a service, or
            an environment emptied: env={}).
    """
    import ntpath
    import posixpath
    own = _own_home() if platform != "win32" else None
    if own is not None:  # $HOME is another user's: so are $XDG_DATA_HOME and $SNAP_USER_COMMON
        return posixpath.join(own, *(("Library", "Application Support") if platform == "darwin"
                                     else (".local", "share")))
    xdg = os.environ.get("XDG_DATA_HOME", "")  # absolute, or ignored (platformdirs 4)
    snap = os.environ.get("SNAP_USER_COMMON", "")
    if platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return os.environ["LOCALAPPDATA"]
    # In a Snap, $HOME and $XDG_DATA_HOME change with every revision.
    if platform not in ("win32", "darwin") and os.environ.get("SNAP") and snap.startswith("/"):
        return snap
    if platform not in ("win32", "darwin") and xdg.startswith("/"):
        return xdg
    paths = ntpath if platform == "win32" else posixpath
    home = paths.expanduser("~")
    if home == "~" or not paths.isabs(home):
        where = "%LOCALAPPDATA% nor %USERPROFILE%" if platform == "win32" else "$HOME"
        raise StateError("cannot find your home directory: neither %s is set, so tcbon "
                         "would depend on the working directory; pass app_dir" % where, "~")
    if platform == "win32":
        return paths.join(home, "AppData", "Local")
    if platform == "darwin":  # $XDG_DATA_HOME, set in ~/.zshrc, never reaches a Finder
        return paths.join(home, "Library", "Application Support")  # or Dock launch
    return paths.join(home, ".local", "share")


def _own_home() -> str | None:
    """Our own user's home (the password database's) if $HOME belongs to
    another user, else None. Root under ``sudo -E`` (or macOS' sudo, which
    keeps $HOME), or a setuid helper, must never create state in the home
    it was given: the folders it made were root's, and locked the user out
    for good (issue 28; Electron #39656, VS Code #97626).

    Raises:
        StateError: $HOME is another user's and we have no home of our own.
    """
    home = os.environ.get("HOME", "")
    if not home or not hasattr(os, "geteuid"):
        return None
    try:
        owner = os.stat(home).st_uid
    except OSError:
        return None  # none yet: whoever creates it owns it
    euid = os.geteuid()
    if owner == euid:
        return None
    import pwd
    try:
        own = pwd.getpwuid(euid).pw_dir
    except KeyError:
        own = ""
    if own == home:  # the password database says it is ours all the same
        return None
    if not own:
        raise StateError("$HOME (%s) belongs to uid %d, not to you (uid %d), and you have no "
                         "home of your own: tcbon creates no state in another user's home; "
                         "run as that user, or pass app_dir" % (home, owner, euid), home)
    return own


def default_app_dir(name: str) -> str:
    """Return where ``Process(name)`` keeps its files by default.

    The same path as ``platformdirs.user_data_dir(name, appauthor=False)``
    (but on macOS, where $XDG_DATA_HOME is ignored: see _data_home): a
    place no logout or tmp cleaner wipes, unlike $XDG_RUNTIME_DIR
    (jupyter_core#143). Inside a Snap: $SNAP_USER_COMMON/NAME, the one
    folder that every revision of the snap shares. A process whose $HOME
    belongs to another user (root under ``sudo -E``) uses its own user's
    home instead.

    Raises:
        StateError: there is no home directory to put it in.
    """
    return os.path.join(_data_home(), name)


# Checks and bounded waits ---------------------------------------------------
# What the public calls accept (each refusal a UsageError that says what to
# pass), and _Wait, the one deadline every call keeps through all its phases.
def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(
            timeout, (int, float)) or not timeout >= 0):
        raise UsageError("timeout must be a number of seconds >= 0, or None to wait "
                         "without limit; got %r" % (timeout,))
    return timeout


def _check_version(version: Any) -> str | None:
    if version is not None and not (isinstance(version, str) and version.strip()):
        raise UsageError("version must be a non-empty string such as '1.4.2', or None; "
                         "got %r" % (version,))
    return version


def _check_mutex(mutex: Any) -> str | None:
    """A mutex name for Windows' installers, or None (issue 23)."""
    if mutex is None:
        return None
    if not isinstance(mutex, str) or not mutex or "\\" in mutex or len(mutex) > 200:
        raise UsageError("mutex must be a name of 1 to 200 characters without a backslash "
                         "(tcbon creates both the plain and the Global\\ one), e.g. "
                         "mutex='MyAppMutex'; got %r" % (mutex,))
    return mutex


def _check_start(command: Any) -> str | list[str]:
    """A start= command: a non-empty string or list of strings (issue 23)."""
    if isinstance(command, (list, tuple)) and command and all(
            isinstance(arg, str) for arg in command):
        return list(command)
    if isinstance(command, str) and command.strip():
        return command
    raise UsageError("start must be the app's command line: a string (split as a shell "
                     "would on POSIX) or a list of strings, e.g. ['myapp', '--hidden']; "
                     "got %r" % (command,))


def _shown(command: str | list[str]) -> str:
    """A command as a person would type it, for messages."""
    return command if isinstance(command, str) else _platform.command_line(command)


def _version_key(version: str | None) -> tuple:
    """A key that orders versions as people read them: numbers as numbers
    (1.10 after 1.9, 1.5.0 the same as 1.5), a pre-release (dev, a, b, rc)
    before its release and a post-release after it; no version, or one
    that does not start with a number, before any that does."""
    import re
    found = re.match(r"\s*v?(\d+(?:\.\d+)*)[.\-_+]?(.*)$", version or "", re.IGNORECASE)
    if found is None:
        return (0, version or "")
    release = [int(part) for part in found.group(1).split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    words = re.findall(r"\d+|[a-z]+", found.group(2).lower())
    phases = {"dev": 0, "a": 1, "alpha": 1, "b": 2, "beta": 2, "c": 3, "rc": 3, "pre": 3,
              "preview": 3, "post": 5, "r": 5, "rev": 5}
    phase = phases.get(words[0], 4) if words else 4  # 4: the release itself
    rest = tuple((1, int(word)) if word.isdigit() else (0, word) for word in words)
    return (1, tuple(release), phase, rest)


def _older(version: str | None, than: str | None) -> bool:
    """True if version is older than than (a primary that published none
    is older than any version)."""
    return _version_key(version) < _version_key(than)


def _check_replace(replace: Any) -> Any:
    if replace not in (False, True, "older") and not callable(replace):
        raise UsageError("replace must be True, False, 'older' or a callable that takes the "
                         "running primary's info (a dict) and returns True to replace it; "
                         "got %r" % (replace,))
    return replace


def _check_target(instances: int, name: str, to: Any, where: dict | None) -> bool:
    """True if a call names a target (to=, where=); only an app of several
    instances has them.

    Raises:
        UsageError: a target for an app of one instance, or a bad one.
    """
    if to is None and where is None:
        return False
    if not instances:
        raise UsageError("to= and where= choose among several instances, but %r allows "
                         "one: pass Process(..., instances=N or True)" % name)
    if where is not None and not isinstance(where, dict):
        raise UsageError("where must be a dict of metadata values, got %r" % (where,))
    if not (to is None or to == "all" or callable(to) or _instance_id(to) is not None):
        raise UsageError("to must be an instance id, 'all' or a callable that chooses "
                         "among the instances, got %r" % (to,))
    return True


def _check_instances(instances: Any) -> int:
    """How many slots Process(instances=...) allows: 0 for one instance
    (the default: no slots at all, the name's own files)."""
    if instances is None or instances is False:
        return 0
    if instances is True:
        return _MAX_INSTANCES
    if not isinstance(instances, int) or not 1 <= instances <= _MAX_INSTANCES:
        raise UsageError("instances must be a number from 1 to %d, True (any number) or "
                         "None (one instance), got %r" % (_MAX_INSTANCES, instances))
    return instances


class _Wait:
    """A bounded wait: a deadline (none when limit is None) and a pause that
    grows from 1 ms to 50 ms between looks."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.deadline = None if limit is None else time.monotonic() + limit
        self._delay = 0.001

    def over(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.001, self.deadline - time.monotonic())

    def pause(self) -> None:
        """Sleep a little, never past the deadline."""
        left = self.remaining()
        time.sleep(self._delay if left is None else min(self._delay, left))
        self._delay = min(self._delay * 2, 0.05)

    def until(self, look: Callable[[], Any], timed_out: Callable[[], Exception]) -> Any:
        """Call look() until it returns something but None, and return that;
        raise timed_out() once the deadline has passed."""
        while True:
            found = look()
            if found is not None:
                return found
            if self.over():
                raise timed_out()
            self.pause()


# State file ------------------------------------------------------------------
# Two files per name in app_dir: NAME.lock (held, never written, truncated or
# unlinked) and NAME.pid (JSON: pid, address, token, ...), trusted only while
# the lock is held; on Windows, while a program that shares no writing holds
# NAME.pid, a third: NAME.pid~, its shadow (see _SHADOW).
def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UsageError("a tcbon name must be a non-empty string, got %r" % (name,))
    bad = sorted({c for c in name if c in _BAD_NAME_CHARS or ord(c) < 32})
    if bad or name in (".", "..") or ".." in name:
        raise UsageError(
            "tcbon name %r cannot be used as a file name: it must not contain "
            "'..', control characters or any of %s" % (name, _BAD_NAME_CHARS))
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        raise UsageError("tcbon name is too long: %d bytes of UTF-8, at most %d"
                         % (len(name.encode("utf-8")), _MAX_NAME_BYTES))
    # Refused everywhere, so that a name means the same app on every system:
    # Windows reads these as devices, and drops a trailing dot or space.
    if name.split(".")[0].rstrip(" ").upper() in _DEVICE_NAMES or name[-1] in ". ":
        raise UsageError("tcbon name %r is not a file name on Windows: it names a device "
                         "(CON, PRN, AUX, NUL, COM1-9, LPT1-9) or ends with a dot or a "
                         "space; choose another" % (name,))
    return name


def _scope_suffix(scope: Any) -> str:
    """What a scope adds to the file names (NAME@MACHINE + this + .lock):
    nothing for one primary per user; the login session's id; a digest of
    the installation's path.

    Raises:
        ValueError: not 'user', 'session', 'installation' or an absolute path.
        StateError: 'session', but no login session id is to be found.
    """
    if scope == "user":
        return ""
    if scope == "session":
        session = _platform.session_id()
        if not session:
            raise StateError("no login session id to scope the primary by: neither "
                             "$XDG_SESSION_ID, an audit session, nor a Windows or macOS "
                             "session; use the 'user' scope", "")
        return ".session-" + "".join(c for c in session if c.isalnum())[:32]
    path = _installation() if scope == "installation" else scope
    if not isinstance(path, (str, os.PathLike)) or not os.path.isabs(path):
        raise UsageError("scope must be 'user', 'session', 'installation' or the absolute "
                         "path of an installation, got %r" % (scope,))
    key = os.path.normcase(os.path.realpath(path)).encode("utf-8", "surrogateescape")
    return ".install-" + _sha256()(key).hexdigest()[:12]


def _installation() -> str:
    """Where this copy of the app is installed: the AppImage (not its mount
    point, which changes every run), a frozen app's executable, the folder
    of the main script, or else the interpreter (a host application's)."""
    if os.environ.get("APPIMAGE", "").strip():
        return os.path.abspath(os.environ["APPIMAGE"])
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file and not getattr(sys, "frozen", False):
        return os.path.dirname(os.path.abspath(main_file))
    return sys.executable


def _reason(exc: OSError) -> str:
    """What went wrong, without the errno and path an OSError's str() repeats."""
    return exc.strerror or str(exc)


def _unusable(what: str, path: str, exc: OSError,
              advice: str = "pass an app_dir you can write to") -> StateError:
    """A StateError for a folder or file the guard cannot use, naming the
    cause (a read-only or full folder, one not ours) and what to do: users
    met a bare "cannot create" (issue 28)."""
    import errno
    causes = {errno.EROFS: ("its file system is read-only",
                            "pass an app_dir on a disk you can write to"),
              errno.ENOSPC: ("the disk is full", "free some space, or pass another app_dir"),
              getattr(errno, "EDQUOT", -1): ("your disk quota is full", "free some space"),
              errno.EACCES: ("you may not write there (%s)" % _reason(exc),
                             "pass an app_dir you own"),
              errno.EPERM: ("you may not write there (%s)" % _reason(exc),
                            "pass an app_dir you own")}
    cause, todo = causes.get(exc.errno or 0, (_reason(exc), advice))
    return StateError("%s %s: %s; %s" % (what, path, cause, todo), path)


def _ensure_private_dir(path: str, create: bool = True) -> None:
    """Create path 0700 if missing; refuse one that others could tamper with:
    they could plant a lock and an address there and receive our events.

    Raises:
        FileNotFoundError: path is missing and create is false.
        StateError: path cannot be created or is not safe.
    """
    if create and not os.path.lexists(path):
        _check_creator(path)
    try:
        if create:
            try:
                os.makedirs(path, exist_ok=True, **_platform.private_dir)
            except FileExistsError:
                pass  # a file is in the way: said below, as for clients
        st = os.lstat(path)
    except FileNotFoundError as exc:  # e.g. under /proc, which takes no new folder
        if create:
            raise StateError("cannot create the tcbon directory %s: %s; pass an app_dir "
                             "you can write to" % (path, _reason(exc)), path) from None
        raise
    except OSError as exc:
        raise _unusable("cannot create the tcbon directory", path, exc) from exc
    import stat
    if stat.S_ISLNK(st.st_mode):
        raise StateError("refusing to use %s: it is a symbolic link; pass the real "
                         "directory as app_dir" % path, path)
    if not stat.S_ISDIR(st.st_mode):
        raise StateError("cannot use %s as the tcbon directory: it is a file, not a "
                         "directory; pass another app_dir" % path, path)
    problem = _platform.owner_problem(st)
    if problem and st.st_uid == 0 != os.geteuid():  # a launch as root (sudo) made it: issue 28
        if create and _set_aside(path, st):
            return _ensure_private_dir(path, create)
        raise StateError("refusing to use %s: it %s: a launch as root (sudo) made it; give it "
                         "back to you with: %s" % (path, problem, _give_back(path)), path)
    if problem:
        raise StateError("refusing to use %s: it %s" % (path, problem), path)


def _nearest(path: str) -> tuple[str, os.stat_result]:
    """The nearest existing folder at or above path, and its stat."""
    path = os.path.abspath(path)
    while True:
        try:
            return path, os.stat(path)
        except FileNotFoundError:
            if os.path.dirname(path) == path:
                raise
            path = os.path.dirname(path)


def _check_creator(path: str) -> None:
    """Refuse to create a state folder inside a folder of another user
    (but root's: /tmp, /srv): root under sudo, say, in the user's home,
    where the folder would then be root's and lock that user out (issue
    28). Our own folders, and root's, are fine."""
    if not hasattr(os, "geteuid"):
        return
    try:
        folder, st = _nearest(path)
    except OSError:
        return  # said when it cannot be created
    if st.st_uid not in (os.geteuid(), 0):
        raise StateError("refusing to create %s: %s belongs to uid %d, not to you (uid %d), "
                         "and the folder would then be yours, not that user's; run as that "
                         "user (not with sudo), or pass an app_dir of your own"
                         % (path, folder, st.st_uid, os.geteuid()), path)


def _give_back(path: str) -> str:
    """The command that gives path, which root took, back to this user."""
    import pwd
    import shlex
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    return "sudo chown -R %s: %s" % (user, shlex.quote(path))


def _set_aside(path: str, st: os.stat_result) -> bool:
    """Move a state folder that a launch as root made out of the way, so
    that this launch makes its own; True if it did (or path changed
    meanwhile: look again). We cannot chown it, nor empty it (it is 0700
    root's), but may rename it within a folder of ours: only there, and
    only while no process of root holds a lock on its file system (its
    lock file we cannot see: a root primary that may still use it keeps
    it). Says where it went, and how to remove it."""
    parent = os.path.dirname(os.path.abspath(path))
    aside = "%s.root-%d" % (path, int(time.time()))
    try:
        if os.stat(parent).st_uid != os.geteuid() or _root_locks(st.st_dev) is not False:
            return False
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return True  # another launch moved it already
        os.rename(path, aside)
    except OSError:
        return False
    if sys.stderr is not None:
        sys.stderr.write("tcbon: %s was root's (a launch with sudo made it): moved it aside to "
                         "%s; remove that with: sudo rm -r %s\n" % (path, aside, aside))
    return True


def _root_locks(dev: int) -> bool | None:
    """Whether a process of root holds a lock on a file of file system
    dev: Linux's /proc/locks lists every lock with its holder's pid and its
    file's device. None where that is unknown."""
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    device = "%02x:%02x:" % (os.major(dev), os.minor(dev))
    for fields in (line.split() for line in lines):
        if "->" in fields or len(fields) < 6 or not fields[5].startswith(device):
            continue  # "->": a waiter, not a holder
        try:
            if os.stat("/proc/" + fields[4]).st_uid == 0:
                return True
        except OSError:
            continue  # gone meanwhile
    return False


# Windows refuses to remove or replace a file that another program has open
# (a backup tool, an editor, a scanner), and one that shares no writing
# refuses even being written (issue 20). Readers must never keep the next
# primary from starting, nor make a client trust an old address: a state file
# that can be neither emptied nor removed is shadowed by NAME.pid~, which
# readers take instead of it while it exists (empty: no address).
_SHADOW = "~"


def _write_state(path: str, state: dict) -> None:
    """Write state, readable by us only: atomically (a temp file, then
    os.replace) where the system lets us, else in place, else in the shadow
    file (see _SHADOW).

    Written in place, a reader may see it empty or in part: that is what
    it sees of a primary still starting (see _read_state), and it looks
    again. It never sees an older primary's address: that was withdrawn
    before this primary published (_withdraw)."""
    import json
    data = json.dumps(state).encode("utf-8")
    shadow = path + _SHADOW
    target = shadow if os.path.lexists(shadow) else path
    # Short: a valid name must never make a path longer than Windows' MAX_PATH.
    tmp = os.path.join(os.path.dirname(path), ".%s.tmp" % os.urandom(6).hex())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _SAFE,
                 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            _retrying(lambda: _replace_or_overwrite(tmp, target, data), target)
        except StateError:
            if target == shadow:
                raise
            _retrying(lambda: _replace_or_overwrite(tmp, shadow, data), shadow)
    except BaseException:
        _remove(tmp)
        raise


def _replace_or_overwrite(tmp: str, path: str, data: bytes) -> None:
    """os.replace(tmp, path), or else write data over path's content and
    remove tmp."""
    try:
        os.replace(tmp, path)  # replaces a planted symlink itself, never its target
    except PermissionError as refused:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | _SAFE)  # PermissionError: retried
        except FileNotFoundError:
            raise refused from None  # nothing to write over (an antivirus holds tmp?)
        try:
            os.write(fd, data)  # one write of a few hundred bytes
        finally:
            os.close(fd)
        try:
            os.remove(tmp)
        except OSError:
            pass  # a hidden file left behind; the state is written


def _read_state(path: str) -> dict | None:
    """Return the published state, or None if missing, partial or foreign.
    Its shadow (see _SHADOW) is read instead of it while one exists. The
    file is read every time; parsed only when its bytes changed (parsing
    was the largest part of a call's own work)."""
    data = _read_bytes(path + _SHADOW)
    if data is None:
        data = _read_bytes(path)
    last = _parsed.get(path)
    if last is not None and last[0] == data:
        return None if last[1] is None else dict(last[1])
    import json
    try:
        state = json.loads(data or b"null")
    except (ValueError, RecursionError):
        state = None
    ok = (isinstance(state, dict)
          and isinstance(state.get("pid"), int)
          and isinstance(state.get("address"), str)
          and isinstance(state.get("token"), str)
          and isinstance(state.get("tcbon"), int))
    _parsed[path] = (data, state if ok else None)
    return dict(state) if ok else None


_parsed: dict[str, tuple[bytes | None, dict | None]] = {}  # path: its last bytes, parsed


def _live_state(path: str) -> dict | None:
    """The published state (see _read_state), unless its process is known
    to have ended (a zombie too, and a pid that a later process took, as
    its start time tells): a killed primary's file stays until the next primary,
    which holds the lock already, withdraws it (under Wine, a scanner or a
    loaded machine, that takes a while), and a reader in between would take
    the dead one for it: a ghost in the list, an address refused."""
    state = _read_state(path)
    if (state is None or state.get("pids") is None
            or state.get("pids") != _pid_space() or state.get("machine") != _machine()):
        return state  # the same pid space: a pid that runs is a pid we can see
    # Our own pid too: a killed primary's, reused by this process (issue 27).
    started = state.get("pid_start")  # none from tcbon before issue 27: not compared
    started = started if isinstance(started, str) else None
    return None if _platform.pid_gone(state["pid"], started) else state


def _pid_space() -> str | None:
    """_platform.pid_space(), once."""
    if not _pid_spaces:
        _pid_spaces.append(_platform.pid_space())
    return _pid_spaces[0]


_pid_spaces: list[str | None] = []


def _read_bytes(path: str) -> bytes | None:
    """The start of a file; None if it is missing, b"" if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | _SAFE)
    except FileNotFoundError:
        return None
    except OSError:
        return b""
    try:
        import stat
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""  # a FIFO, a device: never read, never waited for (issue 27)
        return os.read(fd, MAX_HEAD)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _retrying(action: Callable[[], None], path: str, limit: float = 1.0) -> None:
    """action(), tried again for about limit seconds while it fails with
    PermissionError: Windows refuses to replace or remove a file that
    another process has open without FILE_SHARE_DELETE (any reader through
    the C runtime) or that an antivirus scans (WinError 32 or 5; pip retries
    for a second too, pip#7280).

    Raises:
        StateError: still refused after limit seconds.
    """
    deadline, delay = time.monotonic() + limit, 0.005
    while True:
        try:
            return action()
        except PermissionError as exc:
            if time.monotonic() >= deadline:
                raise StateError("cannot replace or remove %s: %s; another program keeps it "
                                 "open (an antivirus?) or the directory is not writable"
                                 % (path, _reason(exc)), path) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _remove(path: str) -> None:
    """Remove path if it exists, retrying through sharing violations."""
    def remove() -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    _retrying(remove, path)


def _withdraw(path: str) -> bool:
    """Make the address in the state file at path unusable at once, then
    remove the file, and its shadow (see _SHADOW). Emptying a file in place
    is refused only by a reader that shares no writing (removing, by any
    reader, on Windows), and no reader trusts an empty file. A file that
    can be neither emptied nor removed is shadowed by an empty one. Returns
    False if anything is left there, empty or shadowed.

    Raises:
        StateError: neither the file nor its shadow can be made unusable.
    """
    shadow = path + _SHADOW
    left = _empty_or_remove(path)
    if left == "stuck":  # as it is, and shadowed from now on
        _retrying(lambda: os.close(os.open(shadow, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                           | _SAFE, 0o600)), shadow)
        return False
    shadow_left = _empty_or_remove(shadow)
    if shadow_left == "stuck":
        raise StateError("cannot empty or remove %s: another program keeps it open without "
                         "sharing it (a backup tool, a scanner?); end that program" % shadow,
                         shadow)
    return left == shadow_left == "gone"


def _empty_or_remove(path: str) -> str:
    """Empty the file at path, then remove it: 'gone', 'empty' (it could
    not be removed) or 'stuck' (neither)."""
    try:
        fd = os.open(path, os.O_WRONLY | _SAFE)
    except FileNotFoundError:
        return "gone"
    except OSError:  # a planted symlink, say: removed, never followed
        fd = None
    if fd is not None:
        try:
            import stat
            if stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO is only removed (issue 27)
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
    try:
        _remove(path)
    except StateError:
        return "stuck" if fd is None else "empty"
    return "gone"


def _parse_address(address: str | int) -> tuple[str, int]:
    """Split 'host:port' (optionally http://...), refusing non-loopback hosts;
    a bare port number means 127.0.0.1."""
    import ipaddress
    if isinstance(address, int) and not isinstance(address, bool):
        address = "127.0.0.1:%d" % address
    if not isinstance(address, str):
        raise UsageError("address must be a loopback 'host:port' string or a port number, "
                         "got %r" % (address,))
    text = address[len("http://"):] if address.startswith("http://") else address
    host, sep, port = text.rstrip("/").rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
        number = int(port)
    except ValueError:
        loopback, number = False, -1
    if not sep or not loopback or not 0 <= number <= 65535:
        raise UsageError("address must be a loopback 'host:port' such as '127.0.0.1:9876', "
                         "got %r: tcbon never listens beyond this machine" % (address,))
    return host, number


def _format_address(host: str, port: int) -> str:
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


# WSGI ------------------------------------------------------------------------
# A tiny Flask-like router: App.route(), tcbon.request, tcbon.jsonify(). Pure
# WSGI, so it can be driven without sockets (and through wsgiref.validate).
_local = _thread._local()


_phrases: dict[int, str] = {}


def _status_line(status: int) -> str:
    if not _phrases:
        from http import HTTPStatus
        _phrases.update((s.value, "%d %s" % (s.value, s.phrase)) for s in HTTPStatus)
    return _phrases.get(status) or "%d Unknown" % status


class Response:
    """An HTTP response a route may return.

    Args:
        body (bytes or str): the body.
        status (int): the HTTP status code.
        headers (list): extra ``(name, value)`` pairs.
        content_type (str): the Content-Type header.
    """

    def __init__(self, body: Any = b"", status: int = 200, headers: list | None = None,
                 content_type: str = "application/json") -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        self.status = status
        self.headers = [("Content-Type", content_type)] + list(headers or [])


class HTTPError(Response, Error):
    """Both an exception and a JSON error response (raise it from a route).

    Args:
        status (int): the HTTP status, e.g. 400.
        message (str): what went wrong and what to do, sent as ``error``.
        headers (list): extra ``(name, value)`` pairs, e.g. ``Allow``.
    """

    def __init__(self, status: int, message: str, headers: list | None = None) -> None:
        import json
        body = json.dumps({"success": False, "error": message, "status": status})
        Response.__init__(self, body, status, headers)
        Error.__init__(self, message)
        self.message = message


def abort(status: int, message: str) -> None:
    """Stop handling the current request with a JSON error reply.

    Raises:
        HTTPError: always.
    """
    raise HTTPError(status, message)


def jsonify(*args: Any, **kwargs: Any) -> Response:
    """Return a JSON Response of a dict (or of keyword arguments), as Flask's."""
    import json
    if args and kwargs:
        raise TypeError("jsonify() takes either a value or keyword arguments, not both")
    value = args[0] if len(args) == 1 else (list(args) if args else kwargs)
    return Response(json.dumps(value))


class _Headers:
    """Case-insensitive read-only view of the request headers in an environ."""

    def __init__(self, environ: dict) -> None:
        self._environ = environ

    def _key(self, name: str) -> str:
        key = name.upper().replace("-", "_")
        return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key

    def get(self, name: str, default: Any = None) -> Any:
        return self._environ.get(self._key(name), default)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._environ


class Request:
    """The request being handled, seen through ``tcbon.request`` in a route.

    Attributes:
        environ (dict): the WSGI environ.
        method (str), path (str), args (dict), headers: as in Flask.
    """

    def __init__(self, environ: dict) -> None:
        from urllib.parse import parse_qsl
        self.environ = environ
        self.method = environ["REQUEST_METHOD"].upper()
        raw = environ.get("PATH_INFO", "") or "/"
        self.path = raw.encode("latin-1").decode("utf-8", "replace")
        self.args = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        self.headers = _Headers(environ)
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        """The raw request body."""
        if self._data is None:
            try:
                length = int(self.environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            self._data = self.environ["wsgi.input"].read(length) if length > 0 else b""
        return self._data

    def get_json(self, force: bool = False, silent: bool = False) -> Any:
        """Decode the JSON body, as Flask's: unless force, only a body sent
        as ``application/json`` (tcbon's server refuses any other anyway).

        Raises:
            HTTPError: 400 if the body is missing or not JSON, 415 if it was
                not sent as JSON (neither when silent: then None).
        """
        import json
        media = self.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if not force and media != "application/json":
            if silent:
                return None
            raise HTTPError(415, "expected a body sent as Content-Type: application/json")
        try:
            if not self.data:
                raise UsageError("the request has no body")
            return json.loads(self.data)
        except (ValueError, RecursionError) as exc:
            if silent:
                return None
            raise HTTPError(400, "expected a JSON body: %s" % exc) from None

    @property
    def json(self) -> Any:
        """The JSON body, or None when there is none."""
        return self.get_json(silent=True)


class _RequestProxy:
    """``tcbon.request``: the Request of the route running in this thread."""

    def __getattr__(self, name: str) -> Any:
        current = getattr(_local, "request", None)
        if current is None:
            raise RuntimeError("tcbon.request is only available while a route handles a request")
        return getattr(current, name)


request = _RequestProxy()

_PARAM_TYPES = {"str": (r"[^/]+", str), "int": (r"-?\d+", int),
                "float": (r"-?\d+(?:\.\d+)?", float), "path": (r".+", str)}


class App:
    """A tiny Flask-like WSGI application: a registry of routes.

    ``Process.wsgi`` is one. Rules look like ``/count`` or ``/files/<path:p>``
    (converters: str, int, float, path); a route returns a dict, a list, a
    str, a Response (see jsonify) or a ``(body, status)`` tuple.

    Args:
        log (logging.Logger): where failing routes are logged.
    """

    def __init__(self, log: Any = None) -> None:
        self.log = log
        self.routes: list[tuple] = []  # (rule, regex, converters, methods, callback)

    def route(self, rule: str, methods: Iterable[str] | None = None) -> Callable:
        """Decorate a callback to handle ``rule``; returns it unchanged."""
        def decorator(callback: Callable) -> Callable:
            self.add_route(rule, callback, methods)
            return callback
        return decorator

    def add_route(self, rule: str, callback: Callable,
                  methods: Iterable[str] | None = None) -> None:
        """Register callback for rule and methods (default GET)."""
        import re
        if not rule.startswith("/"):
            raise UsageError("a route rule starts with '/', got %r" % (rule,))
        pattern, converters, pos = [], {}, 0
        for m in re.finditer(r"<(?:(\w+):)?(\w+)>", rule):
            kind = m.group(1) or "str"
            if kind not in _PARAM_TYPES:
                raise UsageError("unknown converter %r in rule %r" % (kind, rule))
            pattern.append(re.escape(rule[pos:m.start()]))
            pattern.append("(?P<%s>%s)" % (m.group(2), _PARAM_TYPES[kind][0]))
            converters[m.group(2)] = _PARAM_TYPES[kind][1]
            pos = m.end()
        pattern.append(re.escape(rule[pos:]))
        verbs = {v.upper() for v in (methods or ["GET"])}
        if "GET" in verbs:
            verbs.add("HEAD")
        regex = re.compile("".join(pattern) + r"\Z")
        self.routes.append((rule, regex, converters, frozenset(verbs), callback))

    def match(self, method: str, path: str) -> tuple[Callable, dict[str, Any]]:
        """Find the callback and its keyword arguments.

        Raises:
            HTTPError: 404 if no rule matches the path, 405 (with Allow) if
                rules match but not for this method.
        """
        allowed = set()
        for _rule, regex, converters, verbs, callback in self.routes:
            m = regex.match(path)
            if m is None:
                continue
            if method not in verbs:
                allowed |= verbs
                continue
            try:
                return callback, {k: converters[k](v) for k, v in m.groupdict().items()}
            except ValueError:
                continue
        if allowed:
            allow = ", ".join(sorted(allowed))
            raise HTTPError(405, "%s is not allowed here; use %s" % (method, allow),
                            [("Allow", allow)])
        raise HTTPError(404, "no route matches %s" % path)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        req = Request(environ)
        outer, _local.request = getattr(_local, "request", None), req  # calls may nest
        try:
            callback, kwargs = self.match(req.method, req.path)
            response = _make_response(callback(**kwargs))
        except HTTPError as exc:
            response = exc
        except Exception as exc:
            if self.log is not None:
                self.log.exception("route %s %s failed", req.method, req.path)
            response = HTTPError(500, "%s %s failed: %s: %s"
                                 % (req.method, req.path, type(exc).__name__, exc))
        finally:
            _local.request = outer
        start_response(_status_line(response.status), response.headers)
        return [response.body]


def _environ(method: str, target: str, content_type: str, body: bytes, server: tuple[str, int],
             remote: str) -> dict[str, Any]:
    """The WSGI environ of a request, without its HTTP_ headers."""
    import io
    from urllib.parse import unquote_to_bytes
    path, _, query = target.partition("?")
    return {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"), "QUERY_STRING": query,
        "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": server[0], "SERVER_PORT": str(server[1]), "SERVER_PROTOCOL": "HTTP/1.0",
        "REMOTE_ADDR": remote, "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr or io.StringIO(),
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }


def _make_response(value: Any) -> Response:
    import json
    if isinstance(value, Response):
        return value
    status, headers = 200, None
    if isinstance(value, tuple):
        value, status, headers = (tuple(value) + (None,))[:3]
        if isinstance(value, Response):
            value.status = status
            return value
    if isinstance(value, (bytes, str)):
        return Response(value, status, headers, "text/plain; charset=utf-8")
    try:
        return Response(json.dumps(value), status, headers)
    except (TypeError, ValueError) as exc:
        raise HTTPError(500, "the route returned a value that is not JSON: %s" % exc) from None


# Server ----------------------------------------------------------------------
# http.server.ThreadingHTTPServer with two mix-ins, combined as socketserver
# combines its own (ThreadingTCPServer = ThreadingMixIn + TCPServer):
#
#   _IntakeMixIn.serve()         the one loop: a selector; no wake-ups while idle
#     _accept()                 one connection per wake-up; at the caps, or out
#                               of descriptors, the oldest pending one goes
#     _receive()                buffers the head, then _read_head() parses it
#                               once and runs every guard on it
#       _refuse()               a refused head: a JSON error, the rest of the
#                               request read and discarded, never kept
#       _dispatch()             a request that passed, with its whole body
#     _WorkerPoolMixIn.process_request()   the spare worker, or a new thread
#       finish_request()        _RequestHandler: WSGI app, one write
#       shutdown_request()
#
# Idle or slow connections cost a socket, not a thread (slowloris), and an
# unauthenticated one never costs more than its head (at most MAX_HEAD).
if TYPE_CHECKING:  # pragma: no cover
    import socket
    from http.server import ThreadingHTTPServer as _ServerBase
    from socketserver import BaseRequestHandler as _HandlerBase
    import queue
    _Request = tuple[socket.socket, "_Head", bytes]  # what the intake hands a worker
    # client_address: Any, as typeshed has it (2-tuple for IPv4, 4-tuple for IPv6)
else:  # the mix-ins' real base is in their combination; the handler needs none
    _ServerBase = _HandlerBase = object

_MAX_HEADERS = 100  #: as http.client's
_LINGER = 1.0  # seconds a refused request may go on sending what is discarded
_WARN_EVERY = 10.0  # seconds between two warnings of one kind
# accept() failures that are ours, not the connection's: out of descriptors
# or buffers (on Windows, sockets say WSAEMFILE and WSAENOBUFS).
_OUT_OF_RESOURCES = frozenset(["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "WSAEMFILE",
                               "WSAENOBUFS"])
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

try:  # hmac.compare_digest is this function; importing hmac would load hashlib
    from _operator import _compare_digest
except ImportError:  # pragma: no cover - other implementations
    from hmac import compare_digest as _compare_digest  # type: ignore[no-redef]


def _proof(token: str, nonce: str) -> str:
    """What a primary answers a nonce with: HMAC-SHA256 keyed by its token
    (RFC 2104; issue 27, finding 8), in hex. Only a process that read the
    token proves it. The key's two padded blocks are made once per token;
    bytes, never hash states to copy: PyPy's SHA-256 is Python, and its
    copies share their state (the proofs of two threads at once broke)."""
    pads = _keyed.get(token)
    if pads is None:
        key = token.encode("ascii")
        key = (_sha256()(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        pads = (bytes(byte ^ 0x36 for byte in key), bytes(byte ^ 0x5C for byte in key))
        if len(_keyed) >= 64:  # the primaries this process reached: a few
            _keyed.clear()
        _keyed[token] = pads
    sha256 = _sha256()
    inner = sha256(pads[0] + nonce.encode("latin-1")).digest()
    return sha256(pads[1] + inner).hexdigest()  # type: ignore[no-any-return]


_keyed: dict[str, tuple[bytes, bytes]] = {}  # token: its HMAC's inner and outer key blocks


def _sha256() -> Callable[..., Any]:
    """SHA-256 as the interpreter builds it in (_sha256; _sha2 from 3.12):
    hashlib would load OpenSSL, a MiB more in every primary."""
    if not _sha256s:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found]
        except ImportError:
            try:
                from _sha2 import sha256  # type: ignore[import-not-found]
            except ImportError:  # pragma: no cover - a build without it
                from hashlib import sha256
        _sha256s.append(sha256)
    return _sha256s[0]  # type: ignore[no-any-return]


_sha256s: list = []


def _seconds(text: str | None) -> float | None:
    """A DEADLINE_HEADER's seconds, or None if absent or not a sane number."""
    try:
        seconds = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if 0.0 <= seconds <= 1e7 else None


def _proof_for(head: _Head | None, token: str) -> str | None:
    """The proof a reply to head carries: only for a head that passed every
    guard, the token's among them (else anyone could ask for proofs)."""
    nonce = None if head is None or head.refusal is not None else head.get(NONCE_HEADER)
    return None if nonce is None else _proof(token, nonce[:64])


class _Head:
    """A request head, parsed once by _read_head() for the intake and the
    handler. ``refusal`` is the (status, message) to refuse it with, if any."""

    __slots__ = ("method", "target", "headers", "length", "size", "refusal")

    def __init__(self, size: int, refusal: tuple[int, str] | None = None) -> None:
        self.method = self.target = ""
        self.headers: list[tuple[str, str]] = []
        self.length = 0  # of the body
        self.size = size  # of the head, with the empty line that ends it
        self.refusal = refusal

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None


def _read_head(buf: bytes | bytearray, hosts: frozenset[str], token: str) -> _Head | None:
    """Parse the request head at the start of buf and check it against every
    guard: None while it is incomplete, else a _Head with its refusal set if
    the request must not be served. The head ends at the first empty line
    (CRLF or bare LF, as http.client reads it)."""
    import re
    start = 0  # an empty line or two before it is ignored (RFC 9112, 2.2)
    while start < min(4, len(buf)) and buf[start] in b"\r\n":
        start += 1
    end = re.compile(rb"\n\r?\n").search(buf, start)
    if end is None or end.end() > MAX_HEAD + start:
        if len(buf) - start > MAX_HEAD:
            return _Head(len(buf), (431, "the request head is larger than %d bytes" % MAX_HEAD))
        return None
    head = _Head(end.end())
    lines = [line[:-1] if line.endswith("\r") else line
             for line in bytes(buf[start:end.start()]).decode("latin-1").split("\n")]
    head.refusal = _parse_request_line(head, lines[0]) or _parse_headers(head, lines[1:])
    head.refusal = head.refusal or _refusal(head, hosts, token)
    return head


def _parse_request_line(head: _Head, line: str) -> tuple[int, str] | None:
    parts = line.split(" ")
    if (len(parts) != 3 or not parts[1].startswith("/") or not parts[1].isprintable()
            or not parts[0] or not set(parts[0]) <= _TOKEN_CHARS):
        return 400, "the request line must be 'METHOD /path HTTP/1.1'"
    head.method, head.target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        if version[:5] == "HTTP/" and version[5:6].isdigit() and version[5] > "1":
            return 505, "only HTTP/1.0 and HTTP/1.1 are spoken here"
        return 400, "the request line must end with HTTP/1.0 or HTTP/1.1"
    return None


def _parse_headers(head: _Head, lines: list[str]) -> tuple[int, str] | None:
    if len(lines) > _MAX_HEADERS:
        return 431, "more than %d header lines" % _MAX_HEADERS
    for line in lines:
        key, sep, value = line.partition(":")
        if not sep or not key or not set(key) <= _TOKEN_CHARS:
            return 400, "a header line is malformed (folded lines are refused too)"
        head.headers.append((key, value.strip(" \t")))
    lengths = head.get_all("Content-Length")
    if lengths:
        digits = lengths[0].lstrip("0") or "0"
        # isdigit() alone accepts '²', which int() refuses.
        if len(lengths) > 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
            return 400, "the Content-Length header is invalid"
        head.length = int(digits) if len(digits) <= 12 else MAX_BODY + 1
    return None


def _refusal(head: _Head, hosts: frozenset[str], token: str) -> tuple[int, str] | None:
    """The guards every request passes, in order. Messages never echo input."""
    found = head.get_all("Host")
    # DNS rebinding (CVE-2018-5702): only our own loopback name is accepted.
    if len(found) != 1 or found[0].lower() not in hosts:
        return 403, "the Host header must name this loopback server"
    # Browsers send these; local tools do not (Zoom CVE-2019-13450).
    for key, _ in head.headers:
        key = key.lower()
        if key == "origin" or key.startswith("sec-fetch-"):
            return 403, "requests from web pages are refused"
    tokens = head.get_all(TOKEN_HEADER)
    if len(tokens) != 1 or not _compare_digest(tokens[0].encode("latin-1"),
                                               token.encode("ascii")):
        return 401, ("missing or wrong %s header; tcbon clients read it from the state "
                     "file" % TOKEN_HEADER)
    if head.get("Transfer-Encoding") is not None:
        return 411, "chunked bodies are refused; send Content-Length"
    if head.length > MAX_BODY:
        return 413, "the body is larger than %d bytes" % MAX_BODY
    media = (head.get("Content-Type") or "").split(";")[0].strip().lower()
    if head.length and media != "application/json":
        return 415, "a request body must be JSON, sent as Content-Type: application/json"
    return None


def _reply(status: int, headers: list[tuple[str, str]], body: bytes,
           head_only: bool = False, proof: str | None = None) -> bytes:
    """A whole HTTP/1.0 reply, to be sent in one write: headers and body in
    two segments stall on Nagle and delayed ACK (about 40 ms a request).
    proof: the PROOF_HEADER of a request that carried the token."""
    lines = ["HTTP/1.0 " + _status_line(status)]
    if proof is not None:
        lines.append("%s: %s" % (PROOF_HEADER, proof))
    for key, value in headers:
        # send_header() passes CR/LF through (gh-142533): never split a reply.
        if "\r" in key + value or "\n" in key + value:
            raise UsageError("a response header contains CR or LF")
        lines.append("%s: %s" % (key, value))
    lines += ["Content-Length: %d" % len(body), "Connection: close",
              "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
              "Server: tcbon/" + __version__, "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head_only else body)


def _error_reply(status: int, message: str, head_only: bool = False,
                 proof: str | None = None) -> bytes:
    import json
    body = json.dumps({"success": False, "error": message, "status": status})
    return _reply(status, [("Content-Type", "application/json")], body.encode(), head_only,
                  proof)


def _waits_for_stop(head: _Head) -> bool:
    """A stop request: served while stopping too, answered once stopped."""
    return head.method == "POST" and head.target == "/stop"


class _Pending:
    """A connection still sending its request."""

    __slots__ = ("buf", "deadline", "address", "head", "refused")

    def __init__(self, address: Any, deadline: float) -> None:
        self.buf = bytearray()
        self.deadline, self.address = deadline, address
        self.head: _Head | None = None
        self.refused = False  # answered: what it still sends is discarded


class _IntakeMixIn(_ServerBase):
    """Mix-in for a socketserver.TCPServer: one selector loop reads each
    request whole, within limits, before a worker thread sees it.

    Limits: ``REQUEST_DEADLINE`` seconds per request; at most a pending-count
    cap (MAX_PENDING, fewer under a low open-file limit) and ``MAX_BUFFERED``
    bytes held in all; past either, the oldest pending connection goes. A
    head is checked (Host, Origin, token, length, type) as soon as it is
    complete, so a refused request never has its body kept.

    Args:
        server_address: the loopback (host, port) to listen on.
        app: the WSGI application.
        token (str): the secret every request must carry.
        note (callable): note(level, message, *args, exc_info=False) logs.
    """

    reserve_worker: Callable[[], bool]  # from _WorkerPoolMixIn
    drain: Callable[[float | None], None]
    claim_reply: Callable[[Any], bool]
    answer_stop_requests: Callable[[float], None]
    hurried: bool

    def __init__(self, server_address: tuple[str, int], app: Callable, token: str,
                 note: Callable[..., None]) -> None:
        import socket
        self.app, self.token, self.note = app, token, note
        # Set once a stop is asked for: requests get 503 "stopping" from then
        # on (never a reset, never a handler of the closing app), but a stop
        # request, which is answered once stopped.
        self.stopping = False
        self.address_family = socket.AF_INET6 if ":" in server_address[0] else socket.AF_INET
        self.max_pending = _platform.pending_cap(MAX_PENDING)
        self._closed = False  # set by close(), which then wakes serve()
        self._pending: dict[socket.socket, _Pending] = {}
        self._buffered = 0  # bytes held by self._pending
        self._listen_again: float | None = None  # after running out of descriptors
        self._quiet_until: dict[str, float] = {}
        # Never a new object per read: PyPy's GC lets discarded ones pile up.
        self._discard = bytearray(65536)
        super().__init__(server_address, _RequestHandler)  # type: ignore[call-arg]
        host, port = self.socket.getsockname()[:2]
        names = {_format_address(host, port), "localhost:%d" % port}
        self.hosts = frozenset(names | ({host, "localhost"} if port == 80 else set()))

    def server_bind(self) -> None:
        """Bind without HTTPServer's socket.getfqdn(): on a broken resolver
        it stalls start-up for ~30 s (pip PR #13742)."""
        import socket
        import socketserver
        socketserver.TCPServer.server_bind(self)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):  # Linux: accept once data has arrived
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        self.server_name, self.server_port = self.socket.getsockname()[:2]

    def serve(self) -> None:
        """Accept and read requests until close(). Nothing a client does ends
        this loop: a failure with one connection drops that connection."""
        import selectors
        self._selector = selectors.DefaultSelector()
        self.socket.setblocking(False)
        self._selector.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._closed:  # checked on every path, failures included
                try:
                    self._serve_once()
                except Exception:  # noqa: BLE001 - logged; the loop must go on
                    self._warn("loop", "the intake loop failed; going on", exc_info=True)
                    time.sleep(0.01)  # never spin on a failure that persists
        finally:
            for sock in list(self._pending):
                self._drop(sock)
            self._selector.close()

    def _serve_once(self) -> None:
        """One select() and the events it reports, until close() is called."""
        timeout = self._next_timeout()
        if self._selector.get_map():
            events = self._selector.select(timeout)
        else:  # not listening for a moment: Windows' select() refuses empty sets
            time.sleep(timeout or 0.0)  # (WinError 10022), as Python's docs warn
            events = []
        for key, _ in events:
            if self._closed:
                return
            sock = self._accept() if key.fileobj is self.socket else key.fileobj
            if sock in self._pending:  # not if evicted earlier in this batch
                try:
                    self._receive(sock, self._pending[sock])
                except Exception:  # noqa: BLE001 - that connection's problem only
                    self._warn("connection", "dropped a connection after an unexpected "
                               "error", exc_info=True)
                    self._drop(sock)
        self._expire()

    def _next_timeout(self) -> float | None:
        times = [p.deadline for p in self._pending.values()]
        if self._listen_again is not None:
            times.append(self._listen_again)
        return max(0.0, min(times) - time.monotonic()) if times else None

    def _accept(self) -> socket.socket | None:
        # One per wake-up; select() reports the listening socket again at
        # once if more wait. An accept-until-empty loop never gets back to
        # select() while connections keep coming, and requests whose body
        # follows their head (as urllib sends them) starve into the deadline.
        import errno
        import selectors
        try:
            sock, address = self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if errno.errorcode.get(exc.errno or 0) not in _OUT_OF_RESOURCES:
                # That connection's own end, before we took it: reset or
                # aborted (Windows reports a client's RST as WSAECONNRESET
                # here). The listener is fine and keeps listening.
                self.note(_DEBUG, "a connection ended before it was accepted: %s",
                          _reason(exc))
                return None
            # EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener stays readable.
            if self._pending:  # room first: even logging may need a descriptor
                self._drop_oldest()
            else:  # nothing of ours to close: listen again a little later
                self._selector.unregister(self.socket)
                self._listen_again = time.monotonic() + 0.1
            self._warn("accept", "cannot accept a connection (%s): closed the oldest "
                       "pending one", _reason(exc))
            return None
        sock.setblocking(False)
        while len(self._pending) >= self.max_pending:
            self._drop_oldest()
        self._pending[sock] = _Pending(address, time.monotonic() + REQUEST_DEADLINE)
        self._selector.register(sock, selectors.EVENT_READ)
        return sock  # to read at once: with TCP_DEFER_ACCEPT, data is there already

    def _receive(self, sock: socket.socket, conn: _Pending) -> None:
        try:
            if conn.refused:  # answered already: read into one buffer, discarded
                return None if sock.recv_into(self._discard) else self._drop(sock)
            chunk = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            return self._drop(sock)
        conn.buf += chunk
        self._buffered += len(chunk)
        if conn.head is None:
            conn.head = _read_head(conn.buf, self.hosts, self.token)
            if conn.head is not None and conn.head.refusal:
                return self._refuse(sock, conn, *conn.head.refusal)
        if conn.head is not None and len(conn.buf) >= conn.head.size + conn.head.length:
            return self._dispatch(sock, conn)
        while self._buffered > MAX_BUFFERED:
            self._drop_oldest()

    def _refuse(self, sock: socket.socket, conn: _Pending, status: int, message: str) -> None:
        """Answer at once, here; discard what the client still sends for a
        moment, so that it can read the answer (closing a socket with unread
        data resets the connection and loses the answer)."""
        self._buffered -= len(conn.buf)
        conn.buf, conn.refused = bytearray(), True
        conn.deadline = min(conn.deadline, time.monotonic() + _LINGER)
        head_only = conn.head is not None and conn.head.method == "HEAD"
        try:  # a few hundred bytes
            sock.send(_error_reply(status, message, head_only, _proof_for(conn.head, self.token)))
            sock.shutdown(1)  # SHUT_WR
        except OSError:
            return self._drop(sock)
        self.note(_DEBUG, "%s refused with %d", conn.address[0], status)

    def _dispatch(self, sock: socket.socket, conn: _Pending) -> None:
        """Hand a whole request that passed the guards to a worker."""
        import socket
        head = conn.head
        assert head is not None
        if self.stopping and not _waits_for_stop(head):
            return self._refuse(sock, conn, 503, "stopping")  # the client goes on to the next
        if not self.reserve_worker():
            return self._refuse(sock, conn, 503, "too many requests at once; retry")
        body = bytes(conn.buf[head.size:head.size + head.length])
        self._forget(sock)
        sock.setblocking(True)
        sock.settimeout(REQUEST_DEADLINE)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        # socketserver's request is a socket; ours, the socket, the head and the body.
        self.process_request((sock, head, body), conn.address)  # type: ignore[arg-type]

    def _forget(self, sock: socket.socket) -> _Pending | None:
        conn = self._pending.pop(sock, None)
        if conn is not None:
            self._buffered -= len(conn.buf)
            self._selector.unregister(sock)
        return conn

    def _drop_oldest(self) -> None:
        """Make room: the connection waiting longest is an attacker's, most likely."""
        self._drop(min(self._pending, key=lambda s: self._pending[s].deadline))

    def _drop(self, sock: socket.socket) -> None:
        """Close a pending connection; again: nothing happens."""
        if self._forget(sock) is not None:
            sock.close()

    def _expire(self) -> None:
        now = time.monotonic()
        for sock in [s for s, p in self._pending.items() if p.deadline <= now]:
            self._drop(sock)  # too slow: slowloris, or a refused one done lingering
        if self._listen_again is not None and now >= self._listen_again:
            import selectors
            self._listen_again = None
            self._selector.register(self.socket, selectors.EVENT_READ)

    def _warn(self, kind: str, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log a warning, at most once per _WARN_EVERY seconds for each kind:
        a flood must not become a flood of log lines."""
        now = time.monotonic()
        if now < self._quiet_until.get(kind, 0.0):
            return
        self._quiet_until[kind] = now + _WARN_EVERY
        try:
            self.note(_WARNING, message + " (said at most every %d s)", *args, int(_WARN_EVERY),
                      exc_info=exc_info)
        except Exception:  # noqa: BLE001 - e.g. out of descriptors: the loop comes first
            pass

    def close(self, drain: float | None) -> None:
        """Stop accepting; wait up to drain seconds (None: no limit) for
        requests in progress.

        serve() is woken by a connection to its own listener, never by a
        socketpair: on Windows that is a loopback TCP pair, which anyone
        could connect to first on 3.7-3.12 before their fixes
        (CVE-2024-3219). A stranger's connection cannot end the loop: only
        the flag set here does."""
        import socket
        self.stopping = self._closed = True
        try:
            with socket.create_connection((self.server_name, self.server_port), timeout=1) as sock:
                sock.sendall(b"\n")  # with TCP_DEFER_ACCEPT, accepted once data comes
        except OSError:
            pass  # a full backlog keeps the loop awake anyway
        self.drain(drain)


class _WorkerPoolMixIn(_ServerBase):
    """Mix-in for a socketserver.TCPServer: a request runs on the one spare
    worker thread, or on a new thread; at most MAX_WORKERS at once. The
    spare waits without a timeout: an idle server makes no wake-ups, and
    starting a thread per request would cost more than the rest of it.

    A stop drains it: requests in progress get drain()'s time to finish;
    those still running then are answered at once with a 503 that says so
    (their handlers' late replies are dropped), so that no client is left
    with a reset that it could not tell from "never handled"."""

    note: Callable[..., None]  # from _IntakeMixIn

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import threading
        try:  # the C queue alone: the queue module brings heapq and more (0.1 MiB)
            from _queue import SimpleQueue
        except ImportError:  # pragma: no cover - PyPy: in Python, in queue
            from queue import SimpleQueue
        self.busy = self.spare = 0  # requests in progress; idle workers
        self.closing = False
        self.hurried = False  # set (also from a signal handler) to end drain() now
        self._queue: queue.SimpleQueue[tuple[_Request | None, Any]] = SimpleQueue()
        self._idle = threading.Condition()
        self._workers = threading.local()
        self._answered: dict[Any, bool] = {}  # connection of a request in progress -> replied
        self._proofs: dict[Any, str | None] = {}  # its reply's proof (see _proof_for)
        self._stop_waiters: set[Any] = set()  # stop requests: answered once stopped
        super().__init__(*args, **kwargs)

    def reserve_worker(self) -> bool:
        """Count a request in, unless MAX_WORKERS are busy already."""
        with self._idle:
            if self.busy >= MAX_WORKERS:
                return False
            self.busy += 1
            return True

    def process_request(self, request: _Request, client_address: Any) -> None:  # type: ignore[override]
        """Hand a reserved request to the spare worker, or to a new thread."""
        import threading
        with self._idle:
            self._answered[request[0]] = False
            self._proofs[request[0]] = _proof_for(request[1], self.token)  # type: ignore
            if _waits_for_stop(request[1]):
                self._stop_waiters.add(request[0])
            if self.spare:
                self.spare -= 1
                return self._queue.put((request, client_address))
        threading.Thread(target=self._work, args=(request, client_address),
                         daemon=True).start()

    def _work(self, request: _Request | None, client_address: Any) -> None:
        while request is not None:
            self._workers.connection = request[0]
            # A handler hears signals (as a process it starts would inherit
            # the mask); an idle worker does not (see _start_deaf).
            previous = _platform.mask_stop_signals(False)
            try:
                self.finish_request(request, client_address)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - logged; the server goes on
                self.handle_error(request, client_address)
            finally:
                _platform.restore_signal_mask(previous)
                self.shutdown_request(request)
            with self._idle:
                self._answered.pop(request[0], None)
                self._proofs.pop(request[0], None)
                self._stop_waiters.discard(request[0])
                self.busy -= 1
                self._idle.notify_all()
                if self.spare or self.closing:
                    return
                self.spare += 1
            request, client_address = self._queue.get()

    def claim_reply(self, connection: Any) -> bool:
        """True once per request: its reply is the caller's to send."""
        with self._idle:
            if self._answered.get(connection):
                return False
            self._answered[connection] = True
            return True

    def shutdown_request(self, request: _Request) -> None:  # type: ignore[override]
        super().shutdown_request(request[0])

    def handle_error(self, request: _Request, client_address: Any) -> None:  # type: ignore[override]
        self.note(_ERROR, "error while handling a request from %s", client_address[0],
                  exc_info=True)

    def _in_progress(self) -> list[Any]:
        """Requests still to be answered, but stop requests and the calling
        worker's own (called with _idle held)."""
        mine = getattr(self._workers, "connection", None)
        return [conn for conn, replied in self._answered.items()
                if not replied and conn is not mine and conn not in self._stop_waiters]

    def drain(self, timeout: float | None) -> None:
        """Let workers end; wait up to timeout seconds (None: no limit) for
        requests in progress, then answer those still running with a 503."""
        with self._idle:
            self.closing = True
            for _ in range(self.spare):
                self._queue.put((None, None))
            self.spare = 0
            start, said = time.monotonic(), False
            deadline = start + (timeout if timeout is not None else float("inf"))
            # In slices: hurried is set without the lock, by a signal handler.
            while self._in_progress() and not self.hurried and time.monotonic() < deadline:
                if not said and time.monotonic() > start + 0.5:
                    said = True  # not for a request that was just sending its reply
                    self.note(_WARNING, "waiting up to %s s for %d request(s) in progress; "
                              "stop again (Ctrl-C) to end them at once", timeout,
                              len(self._in_progress()))
                self._idle.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            abandoned = [(conn, self._proofs.get(conn)) for conn in self._in_progress()]
            for conn, _ in abandoned:
                self._answered[conn] = True
        for conn, proof in abandoned:
            try:
                conn.sendall(_error_reply(503, "the primary stopped before this request's "
                                               "handler finished; it may have done part of "
                                               "its work", proof=proof))
            except OSError:
                pass
        if abandoned:
            self.note(_WARNING, "stopped with %d request(s) still being handled", len(abandoned))

    def answer_stop_requests(self, timeout: float) -> None:
        """Wait up to timeout seconds while stop requests send their replies."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._stop_waiters and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))


class _RequestHandler(_HandlerBase):
    """Answers one request that the intake read whole and let through:
    runs the WSGI app and writes the reply in one piece. socketserver's
    request-handler contract: made with (request, client_address, server),
    it handles the request at once; request is (socket, _Head, body)."""

    server: _IntakeMixIn

    def __init__(self, request: _Request, client_address: Any,  # type: ignore[override]
                 server: _IntakeMixIn) -> None:
        self.connection, self.head, self.body = request
        self.client_address, self.server = client_address, server
        self.proof = _proof_for(self.head, server.token)
        if server.stopping and not _waits_for_stop(self.head):  # queued before the stop
            self.send(_error_reply(503, "stopping", self.head.method == "HEAD", self.proof), 503)
        else:
            self.send(*self.run_wsgi())

    def environ(self) -> dict[str, Any]:
        head = self.head
        environ = _environ(head.method, head.target, head.get("Content-Type") or "", self.body,
                           (self.server.server_name, self.server.server_port),
                           self.client_address[0])
        seconds = _seconds(head.get(DEADLINE_HEADER))
        if seconds is not None:  # the sender's: no handler starts after it (issue 29)
            environ["tcbon.deadline"] = time.monotonic() + seconds
            environ["tcbon.timeout"] = seconds
        if head.get(ACK_HEADER) == "1":
            environ["tcbon.delivered"] = self.delivered
        for key, value in head.headers:
            key = key.upper()
            # With '_', X_Token and X-Token would be one key; servers drop them.
            if "_" not in key and key not in ("CONTENT-TYPE", "CONTENT-LENGTH"):
                key = "HTTP_" + key.replace("-", "_")
                environ[key] = environ[key] + "," + value if key in environ else value
        return environ

    def delivered(self) -> None:
        """Tell the sender, once, that its request's handler starts: an
        interim "100 Continue" (http.client passes over it; tcbon's client
        notes it), sent at once (TCP_NODELAY: no stall before the reply)."""
        if getattr(self, "_acked", False):
            return
        self._acked = True
        try:
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n%s: 1\r\n\r\n"
                                    % ACK_HEADER.encode("ascii"))
        except OSError:
            pass  # the sender went away: its handler runs all the same

    def run_wsgi(self) -> tuple[bytes, int]:
        """Call the app; return the whole reply and its status."""
        started: list = []
        written: list[bytes] = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            started[:] = [int(status.split(" ", 1)[0]), headers]
            return written.append  # the legacy write() callable, as PEP 3333 wants

        head_only = self.head.method == "HEAD"
        try:
            result = self.server.app(self.environ(), start_response)
            try:
                written.extend(result)
            finally:
                getattr(result, "close", lambda: None)()
            return _reply(started[0], started[1], b"".join(written), head_only,
                          self.proof), started[0]
        except Exception:  # noqa: BLE001 - any failure of the app is a 500, logged
            self.server.note(_ERROR, "the WSGI application failed on %s %s", self.head.method,
                             self.head.target.partition("?")[0], exc_info=True)
            return _error_reply(500, "the application failed", head_only, self.proof), 500

    def send(self, reply: bytes, status: int) -> None:
        if not self.server.claim_reply(self.connection):  # type: ignore[attr-defined]
            return  # the stop has answered it already
        self.server.note(_DEBUG, "%s %s %s -> %d", self.client_address[0], self.head.method,
                         self.head.target.partition("?")[0], status)
        try:
            self.connection.sendall(reply)
        except OSError:
            pass  # the client went away


_server_classes: list[type] = []


def _server_class() -> type[_IntakeMixIn]:
    """ThreadingHTTPServer with the intake and the worker pool mixed in,
    combined on first use: ``import tcbon`` does not load http.server.

    Also imports, here, on the thread that starts the server, every module
    that its threads import later: with a zipped standard library (the
    embeddable CPython, DCC hosts) the zipimport of 3.8 and 3.9 is not
    thread-safe, and a module two threads import at once can be seen half
    made ("module 'json' has no attribute 'dumps'", issue 20)."""
    if not _server_classes:
        import errno  # noqa: F401 - for the threads, as said above
        import http  # noqa: F401
        import io  # noqa: F401
        import json
        import re  # noqa: F401
        import selectors  # noqa: F401
        import urllib.parse  # noqa: F401
        import zipimport
        from http.server import ThreadingHTTPServer
        if isinstance(getattr(json, "__loader__", None), zipimport.zipimporter):
            # What a warning or a failed handler imports, too, and a handler's
            # call to another app (getaddrinfo() looks up the idna codec): only
            # where the race is (their 2 MiB stay out of a primary that never
            # logs or calls).
            import concurrent.futures  # noqa: F401 - imports logging
            import encodings.idna  # noqa: F401

        # Defined here, on first use, not at import: its base would load
        # http.server, socket and email with tcbon (about 10 ms that a second
        # instance and a client never need; issue 26's import figure).
        class Server(_IntakeMixIn, _WorkerPoolMixIn, ThreadingHTTPServer):
            """The primary's server: ThreadingHTTPServer, with the intake
            (one thread reads each request head, under its guards) and the
            worker pool (reused threads run the handlers) mixed in."""
            daemon_threads = True
            allow_reuse_address = _platform.reuse_address
            request_queue_size = 128  # socketserver's 5 drops the SYNs of a burst

        _server_classes.append(Server)
    return _server_classes[0]


# Lock ------------------------------------------------------------------------
# One class for every lock file: the primary's (the name's own, or a slot's),
# the side locks (a launch replacing the primary, one starting it on demand),
# and the probes that only look.
class _Lock:
    """One lock file: its path and, while open, its descriptor. Taken
    exclusively by a primary (the name's, or its slot's) and by the side
    locks (a launch replacing the primary, one starting it on demand);
    shared, for a moment, by a probe, which can never make a launch believe
    that a primary runs. Opened without truncating, never unlinked
    (filelock#574); released by closing, as by a process' end (kill -9).

    Attributes:
        path (str): the lock file.
        fd (int): its descriptor while open, else -1.
    """

    def __init__(self, path: str) -> None:
        self.path, self.fd = path, -1

    def open(self) -> _Lock:
        """Open (creating 0600) without truncating; return self.

        Raises:
            StateError: it cannot be opened, or is not a regular file of ours.
        """
        import errno
        import stat
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _SAFE, 0o600)
        except OSError as exc:
            advice = ("it is a symbolic link: remove it" if exc.errno == errno.ELOOP
                      else "pass an app_dir on a local disk you can write to")
            raise _unusable("cannot open the lock file", self.path, exc, advice) from exc
        st = os.fstat(self.fd)
        problem = None if stat.S_ISREG(st.st_mode) else "is not a regular file"
        problem = problem or _platform.owner_problem(st)
        if problem:
            self.close()
            raise StateError("refusing to use the lock file %s: it %s" % (self.path, problem),
                             self.path)
        return self

    def _try(self, shared: bool = False) -> bool:
        """_platform.lock(): True if taken, False if another process holds it; a
        failure that is not contention is a StateError, never "held"."""
        try:
            return _platform.lock(self.fd, shared)
        except OSError as exc:
            import errno
            raise StateError("cannot lock %s: %s (%s): its file system does not support "
                             "locks (NFS mounted with nolock, SMB, some FUSE file systems); "
                             "pass an app_dir on a local disk" % (
                                 self.path, _reason(exc),
                                 errno.errorcode.get(exc.errno or 0, exc.errno)),
                             self.path) from exc

    def take(self) -> str:
        """Take it exclusively, without waiting: "ours"; else who holds it:
        "probed" (probes only, for microseconds: look again) or "held"."""
        if self._try():
            return "ours"
        if self._try(shared=True):
            _platform.unlock(self.fd, shared=True)
            return "probed"
        return "held"

    def wait(self, wait: _Wait, timed_out: Callable[[], Exception]) -> _Lock:
        """Open and take it, waiting within wait (a side lock); return self.

        Raises:
            timed_out(): it was still held once wait was over.
        """
        self.open()
        try:
            wait.until(lambda: self.take() == "ours" or None, timed_out)
        except BaseException:
            self.close()
            raise
        return self

    def release(self) -> None:
        """Let go of it (ours) and close it."""
        try:
            _platform.unlock(self.fd)
        finally:
            self.close()

    def close(self) -> None:
        """Close it: released if ours, unless another descriptor shares it
        (a forked child's copy closes without releasing the parent's)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    @staticmethod
    def held(path: str) -> bool:
        """True while a primary (or a launch, for a side lock) holds it."""
        import stat
        lock = _Lock(path)
        try:
            lock.fd = os.open(path, os.O_RDONLY | _SAFE)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StateError("cannot open the lock file %s: %s" % (path, _reason(exc)),
                             path) from exc
        try:
            if not stat.S_ISREG(os.fstat(lock.fd).st_mode):  # a FIFO, opened without waiting
                raise StateError("refusing to use the lock file %s: it is not a regular "
                                 "file; remove it" % path, path)  # (issue 27)
            if lock._try(shared=True):
                _platform.unlock(lock.fd, shared=True)
                return False
            return True
        finally:
            lock.close()


# Finding and reaching the primary -------------------------------------------
# _Client is the transport: one HTTP exchange, within one deadline, and what
# its failures mean (a refused connection delivered nothing and is retried; a
# cut one may have been handled and never is, unless the primary died with it
# unread). _Finder answers "which primary, and how do I reach it" for every
# call, one instance or several.
class _DeadlineSocket:
    """A connected socket whose every operation ends by one deadline. A
    socket timeout bounds each read alone: a peer that trickles its reply,
    or a connect that waited for a SYN retry, would stretch a call far past
    its timeout."""

    def __init__(self, sock: socket.socket, deadline: float | None) -> None:
        self._sock, self._deadline = sock, deadline
        self._files, self._closed = 0, False
        self._start = b""  # the reply's first bytes, until an interim one is known

    def _arm(self) -> None:
        if self._deadline is None:
            return
        left = self._deadline - time.monotonic()
        if left <= 0:
            import socket
            raise socket.timeout("timed out")
        self._sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self._arm()
        self._sock.sendall(data)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        self._arm()
        got = self._sock.recv_into(buffer, nbytes)
        if len(self._start) < 13:  # "HTTP/1.1 100 ": the primary said its handler starts
            self._start += bytes(memoryview(buffer)[:min(got, 13 - len(self._start))])
            if self._start == b"HTTP/1.1 100 ":
                _local.delivered = True
        return got

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        import io
        import socket
        self._files += 1
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def _decref_socketios(self) -> None:
        self._files -= 1
        if self._closed and not self._files:
            self._sock.close()

    def close(self) -> None:  # as socket.socket: closed once its files are
        self._closed = True
        if not self._files:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _connection(host: str, timeout: float | None = None, **kwargs: Any) -> Any:
    """An http.client.HTTPConnection that keeps to timeout for the whole
    exchange (urllib's do_open calls this as its http_class)."""
    import http.client
    import socket
    conn = http.client.HTTPConnection(host, timeout=timeout, **kwargs)
    deadline = None if timeout is None else time.monotonic() + timeout
    verify = getattr(_local, "verify", None)

    def connect(*args: Any) -> Any:
        sock = socket.create_connection(*args)
        # Connected: whoever listens there holds the port now. Nothing is sent
        # (not the token, not the launch's data) unless the primary we read
        # still holds its lock and its state: else it died or stopped, and
        # another process may have bound its port (issue 27, finding 8).
        if verify is not None and not verify():
            sock.close()
            raise _NotThePrimary("the primary left its address before the request was sent")
        return _DeadlineSocket(sock, deadline)
    conn._create_connection = connect  # type: ignore[attr-defined]
    return conn


class _NotThePrimary(ConnectionError):
    """Connected to an address whose primary has gone: nothing was sent."""


_openers: list = []
_opening = _thread.allocate_lock()


def _opener() -> Any:
    """urllib's opener for the primary's address, made once, with every
    module a call imports. Under a lock: with a zipped standard library the
    zipimport of 3.8 and 3.9 is not thread-safe, and the first calls of two
    threads at once failed ("module 'json' has no attribute 'dumps'",
    "cannot import name '_has_surrogates'"; issue 20)."""
    if not _openers:
        with _opening:
            if not _openers:
                # For the calls, as said above; encodings.idna: getaddrinfo() looks
                # up this codec, so imports it, on first use.
                import encodings.idna  # noqa: F401
                _sha256()
                import http.client  # noqa: F401
                import json  # noqa: F401
                import socket  # noqa: F401
                import urllib.request
                # No ProxyHandler({}) means urllib sends loopback requests (and the
                # token) through $http_proxy. No redirect handler: nothing to follow.
                handler = urllib.request.HTTPHandler()
                handler.http_open = lambda req: handler.do_open(_connection, req)  # type: ignore
                opener = urllib.request.OpenerDirector()
                for each in (urllib.request.ProxyHandler({}), handler):
                    opener.add_handler(each)
                _openers.append(opener)
    return _openers[0]


def _open(url: str, method: str, body: bytes | None, token: str, timeout: float | None,
          verify: Callable[[], bool] | None = None,
          ack: bool = False) -> tuple[int, str, bytes, bool]:
    """One HTTP exchange through urllib.request, within timeout seconds in
    all, sent only if verify() says so once connected; returns status,
    type, body, and whether the reply proved that it knows the token. The
    primary runs no handler after this call has given up (a deadline a
    little before the timeout), and with ack says when one starts
    (_local.delivered; see _DeadlineSocket)."""
    import urllib.request
    opener = _opener()
    nonce = os.urandom(16).hex()
    headers = {TOKEN_HEADER: token, NONCE_HEADER: nonce}
    if timeout is not None:
        headers[DEADLINE_HEADER] = "%.3f" % max(0.0, timeout - min(0.1, timeout / 10))
    if ack:
        headers[ACK_HEADER] = "1"
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    _local.verify, _local.delivered, _local.ack = verify, False, ack
    try:
        with opener.open(req, timeout=timeout) as reply:
            data = reply.read()
            proved = reply.headers.get(PROOF_HEADER) == _proof(token, nonce)
            return reply.status, reply.headers.get("Content-Type", ""), data, proved
    finally:
        _local.verify = None


def _decode(content_type: str, data: bytes) -> Any:
    import json
    if not data:
        return None
    if content_type.startswith("application/json"):
        try:
            return json.loads(data)
        except ValueError:
            pass
    return data.decode("utf-8", "replace")


class _Client:
    """The transport alone: one HTTP exchange with the primary that
    published a state, within one deadline, and what its failures mean. It
    knows no files; which primary to ask is _Finder's question."""

    def __init__(self, name: str) -> None:
        self.name = name

    def exchange(self, state: dict, method: str, path: str, body: bytes | None, wait: _Wait,
                 ended: Callable[[dict, _Wait], str | None],
                 still: Callable[[], bool] | None = None,
                 ack: bool = False) -> tuple[int, Any] | str:
        """One exchange with the primary that published state, sent once
        connected only if still() says it holds its lock and state: its
        status and decoded reply, or "refused", "stopping" or "gone" when
        nothing was handled (or that primary has ended: ended(state, wait)
        said so).

        Raises:
            Timeout, Error: see transport_error; Error: a reply that does
            not prove it comes from the primary (a state that says its
            primary proves its replies).
        """
        import http.client
        try:
            status, ctype, data, proved = _open(
                "http://%s%s" % (state["address"], path), method, body, state["token"],
                wait.remaining(), still, ack)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(getattr(exc, "reason", exc), _NotThePrimary):  # urllib wraps it
                return "gone"  # nothing was sent
            kind = self.transport_error(exc, state, "%s %s" % (method, path), wait, ended)
            if isinstance(kind, str):
                return kind
            raise kind from None
        if state.get("proof") and not proved:
            raise Error("%r's address %s answered %s %s without proof that it knows the "
                        "primary's secret: another program may have taken its port; nothing "
                        "of the reply was used" % (self.name, state["address"], method, path))
        reply = _decode(ctype, data)
        if status == 503 and isinstance(reply, dict) and reply.get("error") == "stopping":
            return "stopping"
        return status, reply

    def body(self, payload: Any) -> bytes:
        """payload as a JSON body. Raises Error, before anything is sent."""
        import json
        try:
            body = json.dumps(payload).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise Error("cannot send %r to %s: the payload is not JSON-serializable (%s)"
                        % (payload, self.name, exc)) from None
        if len(body) > MAX_BODY:
            raise Error("cannot send %d bytes of JSON to %s: a request carries at most %d; "
                        "send less, or a file name" % (len(body), self.name, MAX_BODY))
        return body

    def answer(self, status: int, reply: Any, what: str, limit: float | None = None) -> Any:
        """The reply, or the RequestError a 4xx or 5xx status means; a 504
        that says the sender's time is up: Busy (the handler started: it
        runs once) or Timeout (it did not: it never will)."""
        error = reply.get("error") if isinstance(reply, dict) else None
        if status == 504 and error in ("busy", "expired"):
            if error == "busy":
                late: Timeout = Busy("handed %s to %r, which is busy: its handler started and goes "
                               "on (it runs once), but did not answer within %.1f s; do not "
                               "send it again" % (what, self.name, limit or 0.0), self.name,
                               limit or 0.0)
            else:
                late = Timeout("%r did not answer %s within %.1f s, nor start its handler: "
                                  "it will not run it; it is busy or hung: retry with a longer "
                                  "timeout, or stop it (python -m tcbon %s stop)" % (
                                      self.name, what, limit or 0.0, self.name), self.name,
                                  limit or 0.0)
            raise late
        if status >= 400:
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise RequestError("%r answered %s with %d: %s" % (self.name, what, status, error),
                               status, reply)
        return reply

    def transport_error(self, exc: Exception, state: dict, what: str, wait: _Wait,
                        ended: Callable[[dict, _Wait], str | None]) -> Error | str:
        """What a failed exchange means: Timeout (no answer in time), Error
        (cut off by a primary that still runs, or not HTTP), "refused" or
        "gone": nothing was handled (a stop's closed listener), or a stop
        that its primary's end carried out (killed during the call: issue
        30). A request cut by a primary that died while it had it is an
        Error, never retried: its handler may have run (issue 29)."""
        import http.client
        import socket
        reason = getattr(exc, "reason", exc)  # urllib wraps some in URLError
        where = "%r (pid %s at %s)" % (self.name, state.get("pid"), state["address"])
        limit = wait.limit or 0.0
        if (isinstance(reason, socket.timeout) or isinstance(exc, socket.timeout)) and (
                what == "POST /stop"):
            return Timeout("asked %s to stop, but it still runs after %.1f s: it may be stuck "
                           "in on_stop or a handler; end pid %s if it never stops"
                           % (where, limit, state.get("pid")), self.name, limit)
        if (isinstance(reason, socket.timeout) or isinstance(exc, socket.timeout)) and (
                getattr(_local, "delivered", False)):
            return Busy("handed %s to %s, which is busy: its handler started and goes on "
                        "(it runs once), but did not answer within %.1f s; do not send it "
                        "again" % (what, where, limit), self.name, limit)
        if isinstance(reason, socket.timeout) or isinstance(exc, socket.timeout):
            never = (", nor start its handler: it will not run it" if getattr(
                _local, "ack", False) else "")  # it says when one starts (a launch's)
            return Timeout("%s did not answer %s within %.1f s%s; it is busy or hung: retry "
                           "with a longer timeout, or stop it (python -m tcbon %s stop)"
                           % (where, what, limit, never, self.name), self.name, limit)
        if isinstance(reason, ConnectionRefusedError):
            return "refused"
        if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
            return Error("%s sent a reply that is not HTTP (%s): is another program using "
                         "its port?" % (where, exc))
        how = ended(state, wait)
        # A process that dies with our request unread in its socket resets the
        # connection (RST); one that had read it closes it (FIN): only then
        # may its handler have run.
        unread = isinstance(reason, (ConnectionResetError, BrokenPipeError)) and not isinstance(
            reason, http.client.RemoteDisconnected)  # that one is a FIN: "closed without reply"
        if how == "withdrawn" or how == "died" and (unread or what == "POST /stop"):
            return "gone"  # a stop's closed listener, or a dead one's: never read
        return Error("lost the connection to %s during %s (%s): %s; the request may or may "
                     "not have been handled" % (where, what, reason, "it has ended"
                                                if how else "it still runs"))

    def unreachable(self, state: dict, app_dir: str) -> Unreachable:
        import socket
        pid, address, host = state.get("pid"), state.get("address"), state.get("host")
        where = "" if host in (None, socket.gethostname()) else " on host %s" % host
        return Unreachable(
            "%r (pid %s%s) holds its lock, but its address %s refuses connections: it runs "
            "in another network namespace (a container, a sandbox without network access), "
            "on another machine that shares %s and this machine's id (a cloned system), or "
            "its server has died; stop or end it where it runs" % (
                self.name, pid, where, address, app_dir), self.name, pid, str(address), host)


def _public(state: dict) -> dict:
    """An instance as the registry shows it: its published state without
    the token (a listing is printed, logged, passed around)."""
    entry = {key: value for key, value in state.items()
             if key not in ("token", "pids", "proof", "pid_start", "ready")}
    entry.setdefault("meta", {})
    entry.setdefault("active", entry.get("started"))
    return entry


def _matches(entry: dict, where: dict) -> bool:
    """True if every key of where has its value in the entry's metadata (or,
    for a key the metadata lacks, in the entry itself: pid, host, ...). A
    string also matches a value that is not one but reads the same as
    JSON (--where pid=1234 on the command line)."""
    import json
    for key, wanted in where.items():
        meta = entry.get("meta") or {}
        value = meta[key] if key in meta else entry.get(key)
        if value != wanted and not (isinstance(wanted, str) and not isinstance(value, str)
                                    and value is not None and json.dumps(value) == wanted):
            return False
    return True


def _instance_id(to: Any) -> int | None:
    """An instance id given as to=: an int, or its digits as a string."""
    if isinstance(to, int) and not isinstance(to, bool):
        return to
    if isinstance(to, str) and to.isdigit():
        return int(to)
    return None


def _choose(entries: list[dict], to: Any, where: dict | None) -> dict | None:
    """The entry a rule chooses among entries, or None: those matching
    where; of them, the one whose id is to, the one a callable to returns
    (an entry or an id), else the most recently active."""
    if where:
        entries = [e for e in entries if _matches(e, where)]
    if callable(to):
        chosen = to(list(entries))
        if isinstance(chosen, dict):
            chosen = chosen.get("id")
        if chosen is None:
            return None
        return next((e for e in entries if e.get("id") == _instance_id(chosen)), None)
    if to is not None:
        return next((e for e in entries if e.get("id") == _instance_id(to)), None)
    return max(entries, key=lambda e: (e.get("active") or 0, e.get("id") or 0), default=None)


def _each(states: list[dict], wait: _Wait, call: Callable[[dict, _Wait], Any]) -> dict:
    """call(state, wait) for each instance at once, within one deadline;
    {id: its result, or the tcbon.Error it raised}."""
    import threading
    results: dict = {}

    def one(state: dict) -> None:
        try:
            results[state.get("id")] = call(state, _Wait(wait.remaining()))
        except Error as exc:
            results[state.get("id")] = exc
    threads = [threading.Thread(target=one, args=(state,), daemon=True) for state in states]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {key: results[key] for key in sorted(results, key=lambda key: key or 0)}


_PROBE_RETRIES = 8  # a slot only probes hold: tried again, after 0 to 7 ms (28 ms in all)
_primaries: Any = None  # a WeakSet of the _Primary parts of this process (see _Finder.local)


class _Finder:
    """Which primary of a name, and how to reach it: the one object every
    call asks, for one instance and for several alike.

    Layout: every primary holds a lock of its own, a slot, and publishes
    its state beside it. One instance (the default) is a single slot, the
    name's own files, NAME@MACHINE.lock and NAME@MACHINE.pid (the scope's
    part before the dot); several (Process(instances=N)) are numbered
    slots, NAME@MACHINE.SLOT.lock and .pid. The lock is the entry: one
    whose lock is not held is no primary, whatever its files say, so a
    killed one is gone at once (Jupyter's runtime files show ghosts:
    jupyter/notebook#5788). Every reader looks at every slot, so a probe,
    ``wait`` or ``wait --exit`` sees an app whatever it allows (issue 26).

    Here, once for every path: the app dir's ownership and modes (issue
    27: a planted dir of another user is refused by every call), liveness,
    choosing (to, where, most recent, all), waiting through a start-up, a
    stop and a replace (the successor lock: issue 30), taking a slot, and
    the in-process short cut (a primary whose handlers run on the calling
    thread is called directly: over HTTP it would wait for itself).

    Attributes:
        limit (int): slots a launch may take: 0 for the name's own only.
        client (_Client): the transport.
    """

    def __init__(self, name: str, app_dir: str, scope_suffix: str, limit: int) -> None:
        self.name, self.app_dir, self.limit = name, app_dir, limit
        self.stem = os.path.join(app_dir, "%s@%s%s" % (name, _machine(), scope_suffix))
        self.client = _Client(name)
        self._trusted = False
        # The state of the primary the last call reached (one instance): the
        # next call but a stop goes to it without looking at the files first,
        # as still() looks once connected (its state still published, its
        # process running); any failure clears it, and the next look takes
        # the whole path (a killed primary: ProcessDoesNotExist at once; a
        # new one: its state).
        self.reached: dict | None = None

    # Files ----------------------------------------------------------------------
    def files(self, slot: int | None = None) -> tuple[str, str]:
        """The lock and state files of a slot (None: the name's own)."""
        stem = self.stem if slot is None else "%s.%d" % (self.stem, slot)
        return stem + ".lock", stem + ".pid"

    def side_file(self, kind: str) -> str:
        """A lock file beside the primary's: NAME@MACHINE.KIND.lock."""
        return "%s.%s.lock" % (self.stem, kind)

    def trusted(self) -> bool:
        """True if app_dir exists and only we can change it; False if it is
        missing (then there is no lock either). Once per finder: only its
        owner could loosen it later.

        Raises:
            StateError: it is not ours, or others may write there.
        """
        if not self._trusted:
            try:
                _ensure_private_dir(self.app_dir, create=False)
            except FileNotFoundError:
                return False
            self._trusted = True
        return True

    def slots(self) -> list[int | None]:
        """The slots that have a lock file (held or not): the name's own
        (None) first, then the numbered ones in order."""
        try:
            names = os.listdir(self.app_dir)
        except OSError:
            return []
        base = os.path.basename(self.stem)
        prefix, found = base + ".", []
        for each in names:
            middle = each[len(prefix):-len(".lock")]
            if (each.startswith(prefix) and each.endswith(".lock") and middle.isdigit()
                    and middle[0] != "0" and len(middle) < 6):
                found.append(int(middle))
        own: list[int | None] = [None] if base + ".lock" in names else []
        return own + sorted(found)

    # Who runs -------------------------------------------------------------------
    def scan(self) -> tuple[list[dict], int]:
        """The published state of every primary whose lock is held (with
        its token), by slot; and how many locks are held in all (the rest
        are starting up, or stopping)."""
        published, held = [], 0
        if not self.trusted():
            return [], 0
        for slot in self.slots():
            lock_file, pid_file = self.files(slot)
            if not _Lock.held(lock_file):
                continue
            held += 1
            state = _live_state(pid_file)
            if state is not None and state.get("id") == slot and self.answers(state):
                published.append(state)
        return published, held

    def answers(self, state: dict) -> bool:
        """Whether a published primary answers yet: one whose handlers run
        on an executor does once that has run its first call (a UI loop, a
        DCC host's timer); until then it is starting up (issue 29). One of
        this process whose handlers run on the calling thread answers (it
        is called directly)."""
        return state.get("ready", True) is not False or self.local(state) is not None

    def running(self) -> bool:
        """True while any primary of the name holds its lock."""
        return self.trusted() and (_Lock.held(self.files()[0]) or self.scan()[1] > 0)

    def answering(self) -> bool:
        """True once a primary has published its address (not withdrawn)."""
        return bool(self.scan()[0])

    def listing(self) -> list[dict]:
        """The primaries whose lock is held and whose state is published, by id."""
        entries = [dict(_public(state), id=state.get("id")) for state in self.scan()[0]]
        return sorted(entries, key=lambda entry: entry["id"] or 0)

    def pick(self, to: Any = None, where: dict | None = None,
             passed: Iterable[str] = ()) -> dict | None:
        """The state of the primary a rule chooses (see Process.send),
        passing over those whose tokens are in passed (they said they are
        stopping); None while none is chosen but one may be soon: a
        primary starting up or stopping, or a launch replacing one (it
        holds the successor lock from the old primary's stop to its own
        start: issue 30). Look again then.

        Raises:
            ProcessDoesNotExist: none runs, or none that the rule accepts.
            StateError: app_dir is not safe.
        """
        if not self.trusted():
            raise self.none_runs(to, where)
        if not self.limit and to is None and not where:  # the name's own first: no listing
            lock_file, pid_file = self.files()
            if _Lock.held(lock_file):
                state = _live_state(pid_file)
                ok = state is not None and state.get("id") is None and self.answers(state)
                return state if ok and state["token"] not in passed else None  # type: ignore
        published, held = self.scan()
        published = [s for s in published if s["token"] not in passed]
        chosen = _choose([_public(s) for s in published], to, where)
        if chosen is not None:
            return next(s for s in published if s.get("id") == chosen.get("id"))
        if held > len(published) or _Lock.held(self.side_file("successor")):
            return None
        raise self.none_runs(to, where)

    def locate(self, wait: _Wait, to: Any = None, where: dict | None = None,
               passed: Iterable[str] = ()) -> dict:
        """pick(), waiting within wait while it says "look again".

        Raises:
            ProcessDoesNotExist: as pick.
            Timeout: one holds its lock but published no (other) address in time.
        """
        _opener()  # every module a call imports, before it uses any (see there)
        return wait.until(lambda: self.pick(to, where, passed),
                          lambda: self.no_address(wait.limit, bool(passed)))

    def none_runs(self, to: Any = None, where: dict | None = None) -> ProcessDoesNotExist:
        if to is None and not where:
            what = "no %r process is running" % self.name
        elif _instance_id(to) is not None and not where:
            what = "instance %s of %r is not running" % (to, self.name)
        else:
            what = "no instance of %r that %s accepts is running" % (
                self.name, "where=%r" % (where,) if where else "the chooser")
        return ProcessDoesNotExist("%s (looked in %s); start one first" % (what, self.app_dir),
                                   self.name, self.app_dir)

    def no_address(self, limit: float | None, past: bool = False) -> Timeout:
        phase = ("the primary it reached is stopping, and no next primary answered"
                 if past else "it holds its lock (%s) but published no address, or none it "
                 "answers at yet (its executor has not run)" % self.files()[0])
        return Timeout("%r did not become reachable within %.1f s: %s; it is starting up or "
                       "shutting down slowly, or is hung; retry with a longer timeout, or "
                       "end that process" % (self.name, limit or 0.0, phase),
                       self.name, limit or 0.0)

    def ended(self, state: dict, wait: _Wait) -> str | None:
        """How the primary that published state has gone: "withdrawn" (its
        stop withdrew the state), "died" (its lock is free, its pid gone,
        the state left behind), or None if it still runs. It looks for a
        moment: a killed process's sockets may close just before its lock
        goes."""
        lock_file, pid_file = self.files(state.get("id"))
        left = wait.remaining()
        look = _Wait(0.25 if left is None else min(0.25, left))
        while True:
            now = _read_state(pid_file)
            if now is None or now["token"] != state["token"]:
                return "withdrawn"
            if not _Lock.held(lock_file) or _live_state(pid_file) is None:
                return "died"
            if look.over():
                return None
            look.pause()

    def still(self, state: dict) -> Callable[[], bool]:
        """A check that the primary that published state still holds its
        slot's lock and its state, in a process that runs: made before a
        request is sent on a connection to its address (see _connection)."""
        lock_file, pid_file = self.files(state.get("id"))
        token, pid, started = state["token"].encode("ascii"), state["pid"], state.get("pid_start")
        same_space = state.get("pids") is not None and state.get("pids") == _pid_space()

        def check() -> bool:
            data = _read_bytes(pid_file + _SHADOW)  # as _read_state reads it
            data = _read_bytes(pid_file) if data is None else data
            if not data or token not in data:
                return False  # withdrawn: a stop closes its listener after that
            if same_space:  # it runs with its state published: it holds its lock and listens
                return not _platform.pid_gone(pid, started)
            return _Lock.held(lock_file)
        return check

    # Reaching it ----------------------------------------------------------------
    def local(self, state: dict) -> _Primary | None:
        """The primary of this process that published state, if its
        handlers run on the calling thread (a MainThreadExecutor's: a DCC
        tool relaunched from a shelf button on the host's UI thread)."""
        for primary in list(_primaries or ()):
            if primary.state.get("token") == state["token"] and primary.serves_this_thread():
                return primary
        return None

    def call(self, method: str, route: str, payload: Any, wait: _Wait, to: Any = None,
             where: dict | None = None, found: Callable[[dict], Any] | None = None,
             ack: bool = False) -> Any:
        """One request to the primary the rule chooses now, within wait
        (found(state) first). Tried again only where nothing was handled: a
        refused connection, a primary that answered "stopping" or that
        ended during the call: the next primary gets it.

        Raises:
            ProcessDoesNotExist, Timeout, Unreachable, RequestError (a
            4xx/5xx answer), Error.
        """
        body = None if payload is None else self.client.body(payload)
        path = "/" + route.lstrip("/")
        passed: set[str] = set()  # the tokens of primaries that said they are stopping
        refused: _Wait | None = None  # even an unbounded call stops reconnecting
        stop = (method, path) == ("POST", "/stop")
        while True:
            last, self.reached = self.reached, None
            if (last is None or self.limit or to is not None or where or stop
                    or last["token"] in passed):
                last = None
                state = self.locate(wait, to, where, passed)
            else:  # the one the last call reached: still() checks it once connected
                state = last
            if found is not None:
                found(state)
            local = self.local(state)
            if local is not None:
                return local.call_directly(method, path, body, wait.remaining())
            result = self.client.exchange(state, method, path, body, wait, self.ended,
                                          self.still(state), ack)
            if state is last and result in ("refused", "gone"):
                continue  # nothing was sent, and it may have ended: the whole look now
            if result == "refused":
                refused = refused or (wait if wait.limit is not None else _Wait(DEFAULT_TIMEOUT))
                if refused.over():
                    raise self.client.unreachable(state, self.app_dir)
                refused.pause()
            elif isinstance(result, str) and stop:
                self.wait_gone(state, wait)  # a stop is for that one: never the next
                return None
            elif isinstance(result, str):  # stopping, or gone: on to the next primary
                passed.add(state["token"])
            else:
                self.reached = state
                return self.client.answer(result[0], result[1], "%s %s" % (method, path),
                                          wait.limit)

    def call_all(self, method: str, route: str, payload: Any, wait: _Wait,
                 where: dict | None) -> dict:
        """The request to every primary where accepts, at once: {id: reply or Error}."""
        return _each(self.chosen_all(where), wait, lambda state, each: self.call(
            method, route, payload, each, to=state.get("id")))

    def chosen_all(self, where: dict | None) -> list[dict]:
        chosen = [s for s in self.scan()[0] if not where or _matches(_public(s), where)]
        if not chosen:
            raise self.none_runs(None, where)
        return chosen

    def stop(self, state: dict, wait: _Wait, handover: bool = False) -> Any:
        """Ask the primary that published state, and no other, to stop;
        return once it has (its lock released: a primary answers /stop
        only then), or once it is gone (stopping already, or killed
        meanwhile); with handover, what its on_handover() returned.

        Raises:
            Timeout, RequestError, Error.
        """
        body = b'{"handover": true}' if handover else b"{}"
        result = self.client.exchange(state, "POST", "/stop", body, wait, self.ended,
                                      self.still(state))
        if not isinstance(result, str):
            reply = self.client.answer(result[0], result[1], "POST /stop")
            return reply.get("handover") if isinstance(reply, dict) else None
        self.wait_gone(state, wait)
        return None

    def wait_gone(self, state: dict, wait: _Wait) -> None:
        """Wait until the primary that published state has stopped (its
        lock free, or its slot another's).

        Raises:
            Timeout: it still runs once wait is over.
        """
        lock_file, pid_file = self.files(state.get("id"))

        def gone() -> bool | None:  # its lock free, or its slot another's
            now = _live_state(pid_file)
            taken = now is not None and now["token"] != state["token"]
            return True if taken or not _Lock.held(lock_file) else None
        wait.until(gone, lambda: Timeout(
            "asked %r (pid %s) to stop, but it still runs after %.1f s; end pid %s if it "
            "never stops" % (self.name, state.get("pid"), wait.limit or 0.0, state.get("pid")),
            self.name, wait.limit or 0.0))

    def stop_or_end(self, state: dict, wait: _Wait, kill_after: float | None) -> int | None:
        """stop(state), and if that primary has not stopped within
        kill_after seconds, end the process that holds its lock (issue
        28): the pid it ended, or None if it stopped when asked."""
        if kill_after is None:
            self.stop(state, wait)
            return None
        left = wait.remaining()
        try:
            self.stop(state, _Wait(kill_after if left is None else min(kill_after, left)))
            return None
        except Timeout:
            return self.end_holder(state, wait)

    def end_holder(self, state: dict, wait: _Wait) -> int:
        """End the process that published state, once verified as the one
        that holds its slot's lock in the OS's lock table (never by pid
        alone: a pid may have been reused); return once the lock is free.

        Raises:
            Error: the holder cannot be verified here; nothing was ended.
            Timeout: the lock is still held after wait.
        """
        lock_file = self.files(state.get("id"))[0]
        pid = state["pid"]
        holders = _platform.lock_holders(lock_file)
        if state.get("pids") != _pid_space() or holders is None or pid not in holders:
            why = ("it runs in another pid namespace (a container, a sandbox)"
                   if state.get("pids") != _pid_space() else
                   "this system has no lock table to verify it by" if holders is None else
                   "the lock table names pid(s) %s as its holder" % (
                       ", ".join(map(str, holders)) or "none"))
            raise Error("%r (pid %s) did not stop when asked, and tcbon cannot verify that "
                        "pid %s still holds its lock: %s; nothing was ended: end that "
                        "process yourself" % (self.name, pid, pid, why))
        try:
            _platform.end_process(pid)
        except OSError as exc:
            raise Error("%r (pid %s) did not stop when asked and cannot be ended: %s"
                        % (self.name, pid, _reason(exc))) from exc
        started = state.get("pid_start")  # gone (its lock with it), a zombie too
        wait.until(lambda: pid if _platform.pid_gone(pid, started) else None, lambda: Timeout(
            "%r: ended pid %s, but it still runs after %.1f s" % (
                self.name, pid, wait.limit or 0.0), self.name, wait.limit or 0.0))
        return pid

    def stop_chosen(self, wait: _Wait, to: Any = None, where: dict | None = None,
                    kill_after: float | None = None) -> list[int]:
        """Stop the primary (or, to='all', every one) the rule chooses;
        return once they have. One of this process stops here if its
        handlers run on this thread (over HTTP it would wait for itself),
        or after the reply if this is one of its handlers; the others are
        asked at once."""
        states = self.chosen_all(where) if to == "all" else [self.locate(wait, to, where)]
        here = {p.state.get("token"): p for p in list(_primaries or ())
                if _in_a_handler() or p.serves_this_thread()}
        others = [s for s in states if s["token"] not in here]
        if len(states) == 1 and others:
            ended = self.stop_or_end(others[0], wait, kill_after)
            return [] if ended is None else [ended]
        results = _each(others, wait, lambda state, each: self.stop_or_end(
            state, each, kill_after)).values()
        for state in states:
            primary = here.get(state["token"])
            if primary is not None:
                primary.stop_soon() if _in_a_handler() else primary.stop()
        failed = [result for result in results
                  if isinstance(result, Error) and not isinstance(result, ProcessDoesNotExist)]
        if failed:
            raise failed[0]
        return [result for result in results if isinstance(result, int)]

    def start_app(self, command: str | list[str], wait: _Wait) -> None:
        """start=: unless a primary answers, run command detached, and return
        once one has published its address (issue 23). Launches that race
        take the starter lock in turn, beside the primary's (as the successor
        lock): the first starts the app, the others find it answering.

        Raises:
            ProcessDoesNotExist: the command cannot be run, or exited before
                an app answered.
            Timeout: none answered within wait.
        """
        _ensure_private_dir(self.app_dir)
        starter = self.side_lock("starter", wait, "starting it")
        try:
            if not self.answering():  # the launch before us may have started it
                self._run_until_answering(command, wait)
        finally:
            starter.release()

    def _run_until_answering(self, command: str | list[str], wait: _Wait) -> None:
        """Run command detached; wait until a primary publishes its address."""
        name, shown = self.name, _shown(command)
        try:
            child = _platform.spawn_detached(command)
        except OSError as exc:
            raise ProcessDoesNotExist("%r is not running, and its start command %s cannot be "
                                      "run: %s; pass a command that exists (a full path, or "
                                      "one on PATH)" % (name, shown, _reason(exc)),
                                      name, self.app_dir) from exc

        def answering() -> bool | None:
            if self.answering():
                return True
            if child.poll() is not None and not self.running():  # none, none starting
                raise ProcessDoesNotExist(
                    "%r is not running: its start command %s exited with code %s before the "
                    "app answered; run that command in a terminal to see why (it must run the "
                    "app itself, not start it in the background and exit)" % (
                        name, shown, child.returncode), name, self.app_dir)
            return None
        try:
            wait.until(answering, lambda: Timeout(
                "%r did not answer within %.1f s of being started with %s; it starts slowly "
                "or hangs: retry with a longer timeout" % (name, wait.limit or 0.0, shown),
                name, wait.limit or 0.0))
        finally:
            if child.returncode is None:  # it runs on: reaped whenever it exits, no zombie
                _thread.start_new_thread(child.wait, ())

    # Becoming one -----------------------------------------------------------------
    def take(self, wait: _Wait, replacing: bool = False) -> tuple[int | None, _Lock]:
        """Take a slot: the name's own, or with limit the first free one;
        its number (None: the name's own) and its lock, taken.

        Raises:
            ProcessExists: the primary runs (or every slot is held).
            Timeout: the holder published no address in time.
        """
        if self.limit:
            return self._take_numbered(wait)
        lock = _Lock(self.files()[0]).open()
        try:
            wait.until(lambda: self._try_lock(lock, replacing),
                       lambda: self.no_address(wait.limit))
        except BaseException:
            lock.close()
            raise
        return None, lock

    def _try_lock(self, lock: _Lock, replacing: bool) -> bool | None:
        """True once ours; None to look again (the holder is a probe, or a
        primary starting up or stopping, or another launch is replacing
        it). Raises ProcessExists for a primary that has published its
        address."""
        taken = lock.take()
        if taken == "ours":
            if not replacing and _Lock.held(self.side_file("successor")):
                _platform.unlock(lock.fd)  # another launch is replacing the primary: it's its
                return None
            return True
        if taken == "probed":
            return None
        state = _live_state(self.files()[1])
        if state is None:
            return None
        here = any(p.state.get("token") == state["token"] for p in list(_primaries or ()))
        message = ("this process (pid %d) is already the primary of %r, through another "
                   "Process object; stop() that one first, or use start(replace=True)"
                   % (state["pid"], self.name) if here else
                   "%r is already running (pid %d at %s)" % (self.name, state["pid"],
                                                             state["address"]))
        raise ProcessExists(message, self.name, state["pid"], state["address"])

    def _take_numbered(self, wait: _Wait) -> tuple[int, _Lock]:
        """The first free numbered slot. Each is one OS lock, taken
        atomically: launches that race get distinct slots. A slot that only
        probes hold (a listing, for a few microseconds) is tried again at
        once, so that a freed slot goes to the next launch rather than one
        further on; then again after the others."""
        while True:
            probed = False
            for slot in range(1, self.limit + 1):
                lock = _Lock(self.files(slot)[0]).open()
                try:
                    for attempt in range(_PROBE_RETRIES):
                        taken = lock.take()
                        if taken == "ours":
                            return slot, lock
                        if taken == "held":
                            break  # an instance holds it
                        probed = True  # only probes hold it
                        time.sleep(0.001 * attempt)
                except BaseException:
                    lock.close()
                    raise
                lock.close()  # ours never held it: nobody's lock goes with it
            if not probed or wait.over():
                raise self.full()
            wait.pause()

    def full(self) -> ProcessExists:
        published = sorted(self.scan()[0], key=lambda s: _public(s)["active"] or 0)
        pid, address = (published[-1]["pid"], published[-1]["address"]) if published else (0, "")
        return ProcessExists("%r already runs %d instance(s), as many as it allows; the "
                             "launch goes to one of them, or stop one first"
                             % (self.name, self.limit), self.name, pid, address)

    def side_lock(self, kind: str, wait: _Wait, doing: str) -> _Lock:
        """Take the side lock of kind (the successor's, the starter's),
        waiting within wait while another launch holds it.

        Raises:
            Timeout: another launch was still doing what doing says.
        """
        return _Lock(self.side_file(kind)).wait(wait, lambda: Timeout(
            "%r: another launch has been %s for %.1f s; try again with a longer timeout"
            % (self.name, doing, wait.limit or 0.0), self.name, wait.limit or 0.0))


# The primary, and Process ----------------------------------------------------
# Signals and the process-wide set of primaries; _Primary, the part that exists
# only while this process is the primary; Process, the front users see.
def _is_future(value: Any) -> bool:
    """True for a concurrent.futures-style Future (what executors return)."""
    return (callable(getattr(value, "result", None))
            and callable(getattr(value, "add_done_callback", None)))


def _say(stream: Any, text: str) -> None:
    """Write text to a stream that may be None (pythonw has no console)."""
    if stream is not None and text:
        stream.write(text)
        stream.flush()


def _piped_stdin() -> str | None:
    """The text piped to this launch; None from a terminal (or none at all).

    Raises:
        ValueError: more than fits in one request; nothing was sent.
    """
    stream = sys.stdin
    if stream is None or stream.isatty():
        return None
    text = stream.read(MAX_BODY + 1)
    if len(text) > MAX_BODY:
        raise UsageError("the piped input is larger than %d characters, more than a "
                         "hand-off carries; pass a file name instead" % MAX_BODY)
    return text


def _relay(reply: Any) -> int:
    """Write a launch's reply's stdout and stderr here; return its exit_code."""
    reply = reply if isinstance(reply, dict) else {}
    for key, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        if isinstance(reply.get(key), str):
            _say(stream, reply[key])
    code = reply.get("exit_code")
    return code if isinstance(code, int) else EXIT_OK


def _worker_sign() -> str | None:
    """What shows that this process is a multiprocessing worker or helper,
    not a launch of the app: a frozen app's worker started again from the
    app's executable, before freeze_support() ran (pyinstaller#7438), or a
    spawned worker importing the main script again (as __mp_main__), which
    multiprocessing itself tells by _inheriting (its
    _check_not_importing_main)."""
    for arg in _this_argv()[1:]:
        if arg.startswith(("--multiprocessing-fork", "from multiprocessing.")):
            return "its command line has %r" % arg[:60]
    process = sys.modules.get("multiprocessing.process")
    if process is not None and getattr(process.current_process(), "_inheriting", False):
        return "multiprocessing is importing the main script again in it"  # as its own check
    return None


def _this_argv() -> list[str]:
    """sys.argv, which embedded interpreters may lack or leave empty."""
    return list(getattr(sys, "argv", None) or [])


def _cwd() -> str | None:
    """The working directory, or None where there is none: a terminal left
    in a deleted build folder, or one whose parent we may not read
    (os.getcwd() raises; qutebrowser's IPC tests cover it, issue 28)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def _exit_now(code: int, signum: int | None = None) -> None:
    """End this process at once (no atexit, no traceback), with code, or
    as signum's default action ends it (killed by SIGTERM: what systemd
    takes for a clean stop); failing that, with the shell's 128 + signum."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - gone (pythonw), closed, or a full pipe
            pass
    if signum is not None:
        _platform.die_by_signal(signum)
    os._exit(128 + signum if signum is not None else code)


def _handle_signals(names: tuple[str, ...],
                    handler: Callable[[int], Any]) -> Callable[[], None]:
    """Make each named signal this platform has call handler(signum); return what
    puts the previous handlers back. Nothing changes off the main thread
    (Python allows no handler there), nor for a signal whose handler the
    host installed from C (an embedding DCC app): Python could not put it
    back."""
    import signal
    import threading
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in names:
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) is not None:
                previous[signum] = signal.signal(signum, lambda number, _: handler(number))
    # A process inherits the signal mask of the thread that started it (a
    # launcher's thread that blocks them, one of another primary's deaf
    # threads): blocked, the signal would never reach a handler.
    mask = _platform.mask_stop_signals(False) if previous else None

    def undo() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)
        _platform.restore_signal_mask(mask)
    return undo


def _wake_on_signals(wake: Callable[[], Any]) -> Callable[[], None]:
    """Call wake() from a thread of its own whenever a signal arrives;
    return what undoes it. Python runs a signal handler only once the main
    thread runs Python code, and a Tk, Qt or GTK main loop idles in C: wake
    (the executor's) makes the loop run a Python call at once, and the
    handler with it. The signal module writes each signal's number to the
    wake-up descriptor; one set before (asyncio's) still gets every byte.
    Not on Windows, where it must be a socket: a loopback pair that others
    could connect to first (CVE-2024-3219)."""
    import signal
    import threading
    if not _platform.signal_wake or threading.current_thread() is not threading.main_thread():
        return _nothing
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        before = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except (ValueError, OSError):  # pragma: no cover - an embedding host's choice
        os.close(read)
        os.close(write)
        return _nothing

    def watch() -> None:
        while True:
            try:
                data = os.read(read, 64)
            except OSError:
                return
            if not data or data.endswith(b"\0"):  # undone
                break
            if before != -1:
                try:
                    os.write(before, data)
                except OSError:
                    pass
            try:
                wake()
            except Exception:  # noqa: BLE001 - the loop may be gone: nothing to wake
                pass
        os.close(read)

    _start_deaf(threading.Thread(target=watch, name="tcbon-signals", daemon=True))

    def undo() -> None:
        current = signal.set_wakeup_fd(before, warn_on_full_buffer=False)
        if current != write:  # someone chained to us: theirs stays, and ours stays open
            signal.set_wakeup_fd(current, warn_on_full_buffer=False)
            return
        try:
            os.write(write, b"\0")
        finally:
            os.close(write)
    return undo


class _SignalBell:
    """What the main thread waits on while it waits for a stop without an
    executor: a pipe that signal.set_wakeup_fd() writes each signal's
    number to, and _Primary._ring() a zero. A lock or sleep that a signal
    arrives just before (after Python last looked for one) is not
    interrupted by it, and the handler would wait for the next signal (a
    SIGTERM that never stopped the primary, 1 in thousands under load); a
    byte in the pipe ends the wait whenever the signal came. Made only on
    the main thread (Python's rule for set_wakeup_fd); a descriptor set
    before (asyncio's) still gets every signal's byte."""

    def __init__(self, read: int, write: int, before: int) -> None:
        self.read, self.write, self.before = read, write, before

    @classmethod
    def made(cls) -> _SignalBell | None:
        """A bell, or None where it cannot be had (Windows, where the
        wait is sliced instead; not the main thread; no descriptors left)."""
        import signal
        import threading
        if not _platform.signal_wake or threading.current_thread() is not threading.main_thread():
            return None
        try:
            read, write = os.pipe()
        except OSError:
            return None
        try:
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            return cls(read, write, signal.set_wakeup_fd(write, warn_on_full_buffer=False))
        except (ValueError, OSError, TypeError):  # pragma: no cover - an embedding host's choice
            os.close(read)
            os.close(write)
            return None

    def submit_later(self, fn: Callable[[], Any]) -> None:
        """Wake run_pending() (the executor's call that _ring() makes)."""
        try:
            os.write(self.write, b"\0")
        except OSError:
            pass  # full: it wakes anyway

    def run_pending(self, timeout: float | None) -> None:
        """Wait until a signal or a ring, then return to Python code, where
        a signal's handler runs."""
        import select
        select.select([self.read], [], [], timeout)
        try:
            data = os.read(self.read, 64)
        except OSError:  # nothing after all (EAGAIN)
            return
        signals = data.replace(b"\0", b"")
        if signals and self.before != -1:
            try:
                os.write(self.before, signals)
            except OSError:
                pass

    def close(self) -> None:
        import signal
        current = signal.set_wakeup_fd(self.before, warn_on_full_buffer=False)
        if current != self.write:  # set by another since, who may pass bytes on to ours:
            signal.set_wakeup_fd(current, warn_on_full_buffer=False)  # theirs stays, and
            return  # ours stays open (a closed number could name another file later)
        os.close(self.read)
        os.close(self.write)


class _Gate:
    """A flag that opens once, and that a signal handler may open: opening
    takes no lock (an Event's set() does, and the handler may have
    interrupted the thread that holds it)."""

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self.opened = False

    def open(self) -> None:
        self.opened = True
        try:
            self._lock.release()
        except RuntimeError:
            pass  # opened already

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until opened (or timeout seconds); True if it is."""
        if self._lock.acquire(timeout=-1 if timeout is None else timeout):
            self._lock.release()
        return self.opened


_END_GRACE = 2.0  # seconds a main loop has to end after a stop, before the process does


def _loop_quit(run: Callable[[], Any]) -> Callable[[], Any] | None:
    """What ends the loop run() runs, where the toolkit says: a bound
    method's object's quit (Tk's root.mainloop, Qt's app.exec, GLib's
    MainLoop.run, Gtk.Application.run), Gtk.main's main_quit; else None."""
    owner = getattr(run, "__self__", None)
    quit = getattr(owner, "quit", None)
    if callable(quit) and not isinstance(owner, type(sys)):
        return quit
    if getattr(run, "__name__", None) == "main":
        quit = getattr(sys.modules.get(getattr(run, "__module__", None) or ""), "main_quit", None)
        if callable(quit):
            return quit
    return None


def _nothing() -> None:
    """A call that only wakes the thread that runs it."""


def _forget_primaries_after_fork() -> None:
    """In a forked child: the parent's primaries are not ours. The child
    shares the parent's lock (one open file description): closing its copy
    of the descriptor is harmless, unlocking would free the parent's lock,
    and so would removing its state or stopping its server at exit."""
    for primary in list(_primaries or ()):
        primary.forget()


def _in_a_handler() -> bool:
    """True on a thread that is handling a request of a primary of this
    process: a route, or an event handler run by an executor."""
    return (getattr(_local, "request", None) is not None
            or getattr(_local, "handling", False))


class _Stopping(Exception):
    """A handler queued before a stop was asked for is not run: its sender
    goes on to the next primary."""


class _Expired(Exception):
    """A handler that would start after its sender's deadline is not run."""


class _Primary:
    """This process as the primary of one name. It exists from the lock
    taken to the lock released, and owns both, the server and its thread,
    the published state and the stop sequence: what happens when a primary
    stops is stop(), below.

    Attributes:
        process (Process): whose hooks, handlers and settings it uses.
        state (dict): what it published (pid, address, token, ...).
        asked (_Gate): opened by the first stop request.
        done (_Gate): opened once it has stopped (its lock released).
        lock_file, pid_file (str): its files: the name's, or its slot's.
        slot (int): its instance id where several may run, else None.
    """

    def __init__(self, process: Process, lock: _Lock | None, files: tuple[str, str],
                 slot: int | None = None) -> None:
        self.process, self.lock, self.slot = process, lock, slot
        self.lock_file, self.pid_file = files
        self.state: dict = {}
        self._publishing = _thread.allocate_lock()  # republish() against the withdrawal
        self.server: _IntakeMixIn | None = None
        self.thread: Any = None
        self.started, self.asked, self.done = _Gate(), _Gate(), _Gate()
        self._starter = _thread.get_ident()
        self.hurried = False  # a second stop request came during the stop
        self.by_signal = False  # the stop was asked for by a signal
        self.signum: int | None = None  # which one
        # main(run=...): while run() runs, what ends its loop; opened once it returned
        self.in_run, self.loop_over = False, _Gate()
        self.loop_quit: Callable[[], Any] | None = None
        self.waiter = False  # a thread waits in run_forever()/main() to stop us
        self.serving: Any = None  # the executor whose calls that thread runs
        # for requests in progress, unless a stop says
        self.drain: float | None = DEFAULT_TIMEOUT if process.timeout is None else process.timeout
        self._undo: list[Callable[[], None]] = []
        self._stopper: int | None = None  # the thread running the stop sequence
        self._in_on_stop: int | None = None  # the same, while in on_stop()
        self.exit_code = EXIT_OK  # what the first launch's own handler said (main())
        self.handing_over = False  # the stop hands on_handover()'s state to a successor
        self.handed: Any = None  # what on_handover() returned, for the successor
        self._once = _thread.allocate_lock()  # the stop sequence runs once
        self._mutex: list[Any] = []  # the named mutex's handles (Windows, mutex=...)

    # Starting -----------------------------------------------------------------
    def start(self, signals: bool, waiter: bool) -> None:
        """With the lock held: listen, on_start(), serve, publish; if any of
        it fails, withdraw, stop listening and release the lock (on_stop
        does not run). signals: SIGTERM stops us from on_start() on (a stop
        asked for then is carried out right after it); waiter: a thread
        will wait for a stop.

        Raises:
            Error: the server cannot listen; whatever on_start raised.
        """
        import atexit
        process = self.process
        try:
            self._hold_mutex()
            _withdraw(self.pid_file)  # a crashed primary's address is never contacted again
            self.server = self._listen()
            if signals:
                self.waiter = waiter
                self.handle_signals(_platform.stop_signals)
            process.on_start()
            self._publish(self.server)
            atexit.register(self.at_exit)
        except BaseException:
            self._abort()
            raise
        finally:
            self.started.open()  # a stop asked for meanwhile may go on
        process._note(_INFO, "%s serving at %s (pid %d)", process.name, self.state["address"],
                      self.state["pid"])

    def _listen(self) -> _IntakeMixIn:
        process = self.process
        try:  # the token: 24 random bytes, as hex (secrets would cost 10 ms)
            return _server_class()(process._bind, process.wsgi, os.urandom(24).hex(),
                                   process._note)
        except OSError as exc:
            import errno
            advice = "pass another address, or none to let the system pick a free port"
            if exc.errno in (errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.ENETDOWN) or (
                    exc.errno in (errno.EACCES, errno.EPERM) and not process._bind[1]):
                advice = ("the loopback network is blocked or down here (a sandbox without "
                          "network, a firewall, a container whose lo is down); allow 127.0.0.1")
            raise _CannotListen("%r cannot listen on %s: %s; %s" % (
                process.name, _format_address(*process._bind), _reason(exc), advice)) from exc

    def _hold_mutex(self) -> None:
        """The named mutex of Process(mutex=...), with the lock (issue 23)."""
        process = self.process
        if process.mutex is None:
            return
        try:
            self._mutex, problem = _platform.hold_mutex(process.mutex)
        except OSError as exc:
            raise Error("%r cannot create the named mutex %r: %s; pass another mutex name "
                        "(one no other kind of object uses)" % (
                            process.name, process.mutex, _reason(exc))) from exc
        if problem is not None and not process._warned_global:
            process._warned_global = True  # once: each later start would say the same
            process._note(_WARNING, "%s: only the session's mutex %r is held, not the Global\\ "
                          "one (%s): an installer that looks in another session will not see "
                          "it", process.name, process.mutex, problem)

    def _abort(self) -> None:
        """Undo a start that failed half-way."""
        self._once.acquire()  # no stop sequence: stops wait for the start
        try:
            if self.state:
                _withdraw(self.pid_file)  # ours: we hold the lock
        except StateError:
            pass  # what start-up raised says more
        finally:
            try:
                if self.server is not None:
                    self._close(self.server)
            finally:
                self.end_wait()
                self._release()

    def _publish(self, server: _IntakeMixIn) -> None:
        import socket
        import threading
        process = self.process
        self.thread = threading.Thread(target=server.serve, daemon=True,
                                       name="tcbon-%s" % process.name)
        _start_deaf(self.thread)  # its workers too: signals go to the main thread
        started = time.time()
        self.state = {"tcbon": PROTOCOL, "version": __version__, "name": process.name,
                      "pid": os.getpid(),
                      "address": _format_address(server.server_name, server.server_port),
                      "token": server.token, "started": started,
                      "host": socket.gethostname(), "machine": _machine(),
                      "active": started, "meta": dict(process._meta),
                      "app_version": process.version, "pids": _pid_space(), "proof": 1,
                      "ready": process.executor is None,
                      "pid_start": _platform.pid_started(os.getpid())}
        if self.slot is not None:
            self.state["id"] = self.slot
        try:
            _write_state(self.pid_file, self.state)
        except OSError as exc:  # a full disk: the lock file took no space, the state does
            raise _unusable("cannot write the state file", self.pid_file, exc) from exc
        _primaries.add(self)
        if not self.state["ready"]:  # answering once the executor runs calls (issue 29)
            _submit_later(process.executor, lambda: self.republish(ready=True))

    def republish(self, **changes: Any) -> None:
        """Publish the state again with changes (meta, active), atomically;
        never once a stop was asked for: the withdrawn address stays
        withdrawn."""
        with self._publishing:
            if self.asked.opened or not self.state:
                return
            state = dict(self.state, **changes)
            _write_state(self.pid_file, state)
            self.state = state

    # Signals and waiting ---------------------------------------------------------
    def handle_signals(self, names: tuple[str, ...], interrupt: bool = False) -> None:
        """Let these signals stop us (see signalled); wake the executor's
        loop when one arrives, so that its handler runs at once."""
        self._undo.append(_handle_signals(names, lambda signum: self.signalled(interrupt,
                                                                               signum)))
        executor = self.process.executor
        if executor is not None and len(self._undo) == 1:
            self._undo.append(_wake_on_signals(lambda: _submit_later(executor, _nothing)))

    def signalled(self, interrupt: bool = False, signum: int | None = None) -> None:
        """SIGTERM (SIGBREAK on Windows), or Ctrl-C where tcbon handles it:
        the first stops us cleanly (interrupt: by KeyboardInterrupt, out of
        a main loop that nothing else could end); a later one hurries the
        stop."""
        if not self.asked.opened:
            self.by_signal, self.signum = True, signum
            if not interrupt:
                return self.stop_soon()
            self.ask()
            raise KeyboardInterrupt
        self.hurried = True
        if self.server is not None:
            self.server.hurried = True  # ends the wait for requests in progress
        if self._in_on_stop == _thread.get_ident():
            raise KeyboardInterrupt  # a slow on_stop, here: stop() goes on

    def wait(self, gate: _Gate) -> None:
        """Wait until gate opens; with a MainThreadExecutor of this thread,
        run its calls meanwhile (a script's loop: Blender's --background,
        a command-line tool), so that handlers and on_stop run here."""
        executor: Any = self.process.executor
        if not (callable(getattr(executor, "run_pending", None))
                and getattr(executor, "is_own_thread", _nothing)()):
            executor = _SignalBell.made()
            if executor is None:
                while not gate.wait(_platform.wait_slice):
                    pass
                return
        self.serving = executor
        try:
            while not gate.opened:
                executor.run_pending(_platform.wait_slice)
        finally:
            self.serving = None
            if isinstance(executor, _SignalBell):
                executor.close()

    def end_wait(self) -> None:
        """Put the signal handlers back. After a stop that a signal asked
        for, Ctrl-C stays ignored rather than Python's own again: a second
        one (a frozen app's bootloader forwards one more, pyinstaller#2483)
        would print a traceback after the clean stop, or, once Python's
        finalization has reset its handlers, end the process by SIGINT."""
        import signal
        import threading
        self.waiter = False
        while self._undo:
            self._undo.pop()()
        if (self.by_signal and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    # Stopping ----------------------------------------------------------------
    def ask(self) -> None:
        """Note a stop request: from now on requests are answered
        "stopping" and go on to the next primary, and a thread that waits
        for the request wakes up."""
        self.asked.open()
        if self.server is not None:
            self.server.stopping = True
        self._ring()

    def _ring(self) -> None:
        """Wake the thread waiting in wait(), whatever it runs meanwhile."""
        serving = self.serving
        if serving is not None:
            serving.submit_later(_nothing)

    def stop_soon(self) -> None:
        """Stop after this (the /stop route, SIGTERM, stop() in a handler):
        on the thread waiting in run_forever() or main() if there is one,
        else through the executor (on_stop then runs on the UI thread),
        else on a thread of its own."""
        if self.asked.opened:
            return
        self.ask()
        if self.waiter:
            return
        executor = self.process.executor
        if executor is not None:
            # Queued even from the executor's own thread: this may be a signal
            # handler, which must not stop us in the middle of its thread's work.
            _submit_later(executor, self.stop)
        else:
            import threading
            threading.Thread(target=self.stop, name="tcbon-stop", daemon=True).start()

    def stop(self) -> None:
        """The stop sequence, once: withdraw the address (a launch from now
        on waits for the lock and becomes the next primary: tauri#1692),
        on_stop(), stop serving (waiting up to self.drain for requests in
        progress), release the lock, then answer the stop requests. A
        second call waits for the first to end, running the executor's
        calls if it is this thread's."""
        if not self.started.opened:
            if self._starter == _thread.get_ident():  # from on_start: after the start
                return self.stop_soon()
            self.started.wait()
        if not self._once.acquire(False):
            if self._stopper != _thread.get_ident():  # on_stop may call stop()
                self.wait(self.done)
            return
        if self.done.opened:  # the start failed and let go of everything
            return
        self._stopper = _thread.get_ident()
        process, server = self.process, self.server
        try:
            self.ask()
            with self._publishing:
                self._withdraw()
            if self.handing_over:
                self.handed = self._handover()
            self._in_on_stop = self._stopper
            process.on_stop()
            self._in_on_stop = None
        except KeyboardInterrupt:  # a second Ctrl-C in a slow on_stop: the stop goes on
            self._in_on_stop = None
            process._note(_WARNING, "%s: on_stop was interrupted", process.name)
        finally:
            self._stopper = None
            if server is not None:
                self._close(server)
            self._release()
            process._note(_INFO, "%s stopped", process.name)
            if server is not None:
                server.answer_stop_requests(1.0)
            self._end_loop()

    def _end_loop(self) -> None:
        """A stop while main()'s run() still runs ends the app too (issue 28:
        a window that outlived its primary opened a second one at the next
        launch): its loop's quit, on the executor's thread, and if run()
        has not returned _END_GRACE seconds later, the process."""
        if not self.in_run or self.loop_over.opened:
            return
        executor, quit = self.process.executor, self.loop_quit
        try:
            if quit is None:
                pass  # nothing known ends that loop: only the process' end will
            elif executor is None or getattr(executor, "is_own_thread", _nothing)():
                quit()  # Tk's quit and Qt's are safe from any thread
            else:
                _submit_later(executor, quit)
        except Exception as exc:  # noqa: BLE001 - the process' end follows
            self.process._note(_WARNING, "%s: ending the main loop failed: %r",
                               self.process.name, exc)
        import threading
        _start_deaf(threading.Thread(target=self._end_process, name="tcbon-end", daemon=True))

    def _end_process(self) -> None:
        """The last resort of _end_loop: the lock is released and on_stop
        ran, but run() goes on. End the process without a traceback, with
        the status main() would have returned, or after a signal as that
        signal ends a process (a service manager's clean stop)."""
        if self.loop_over.wait(_END_GRACE):
            return
        process = self.process
        process._note(_WARNING, "%s: its main loop still ran %.0f s after the stop: ending the "
                      "process; pass main(quit=...) to end the loop", process.name, _END_GRACE)
        _exit_now(self.exit_code, self.signum)

    def _handover(self) -> Any:
        """on_handover()'s state for the successor (None, logged, if it
        failed or is not JSON: the stop goes on either way)."""
        import json
        process = self.process
        try:
            state = process.on_handover()
            json.dumps(state)
            return state
        except Exception:  # noqa: BLE001 - a stop asked for must happen
            process._note(_ERROR, "%s: on_handover failed; the successor gets None",
                          process.name, exc_info=True)
            return None

    def _withdraw(self) -> None:
        """Only our own: if app_dir was deleted under us, the file there now
        belongs to a newer primary."""
        path = self.pid_file
        state = _read_state(path)
        if state is not None and state.get("token") == self.state.get("token") and not (
                _withdraw(path)):
            self.process._note(_WARNING, "%s: left %s behind, empty: another program keeps "
                               "it open", self.process.name, path)

    def _close(self, server: _IntakeMixIn) -> None:
        import threading
        server.hurried = server.hurried or self.hurried
        server.close(drain=self.drain)
        thread = self.thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join()
        server.server_close()

    def _release(self) -> None:
        import atexit
        atexit.unregister(self.at_exit)
        if _primaries is not None:
            _primaries.discard(self)
        handles, self._mutex = self._mutex, []
        _platform.release_mutex(handles)  # with the lock: an installer sees both go together
        try:
            if self.lock is not None:
                self.lock.release()
        finally:
            self._detach()
            self.done.open()
            self._ring()

    def _detach(self) -> None:
        """The Process' primary part no more (its lock released, or a
        forked child's copy forgotten)."""
        if self.process._primary is self:
            self.process._primary = None

    def at_exit(self) -> None:
        if not self.done.opened:
            self.stop()

    def forget(self) -> None:
        """After fork, in the child: not the primary, without unlocking,
        withdrawing or stopping anything of the parent's."""
        import atexit
        atexit.unregister(self.at_exit)
        if self.lock is not None:
            self.lock.close()  # the child's copy only: the parent keeps it
        _primaries.discard(self)
        self._detach()
        self.process._inherited = True  # its stop() must not stop the parent
        self.process._lifecycle = _thread.RLock()  # another thread may have held it

    # Serving -------------------------------------------------------------------
    def serves_this_thread(self) -> bool:
        """True while it serves and its handlers run on the calling thread
        (an executor with is_own_thread(), such as MainThreadExecutor's)."""
        own_thread = getattr(self.process.executor, "is_own_thread", None)
        return not self.asked.opened and own_thread is not None and bool(own_thread())

    def call_directly(self, method: str, path: str, body: bytes | None,
                      limit: float | None) -> Any:
        """A request to this primary's wsgi app, run on the calling thread,
        no socket: over HTTP, a caller on the thread that runs the handlers
        (a MainThreadExecutor's) would wait for itself until its timeout."""
        process = self.process
        environ = _environ(method, path, "application/json" if body else "", body or b"",
                           ("127.0.0.1", 0), "in-process")
        environ["tcbon.timeout"] = limit  # how long _route_event may wait for a handler
        started: list = []
        data = b"".join(process.wsgi(environ, lambda status, headers, exc_info=None:
                                     started.extend((status, headers))))
        status = int(started[0].split(" ", 1)[0])
        reply = _decode(dict(started[1]).get("Content-Type", ""), data)
        return process._finder.client.answer(status, reply, "%s %s" % (method, path), limit)

    def took_own_launch(self, result: Any) -> None:
        """What the handler said to the first launch (main()'s own argv):
        its stdout and stderr are written here, its exit_code kept for
        main() to return; a Future is followed until it is done."""
        if not _is_future(result):
            self.exit_code = _relay(result)
        elif not result.done():
            result.add_done_callback(self.took_own_launch)
        elif result.cancelled() or isinstance(result.exception(), _Stopping):
            pass  # stopped before its loop ran it: nothing to open
        elif result.exception() is not None:
            self.process._note(_ERROR, "%s: the handler of the first launch failed: %r",
                               self.process.name, result.exception())
        else:
            self.took_own_launch(result.result())

    # Routes ---------------------------------------------------------------------
    def route_index(self) -> dict:
        state = self.state
        return {"success": True, "name": self.process.name, "pid": state.get("pid"),
                "address": state.get("address"), "version": __version__,
                "protocol": PROTOCOL, "started": state.get("started"),
                "argv": _this_argv(), "host": state.get("host"), "id": state.get("id"),
                "active": state.get("active"), "meta": state.get("meta", {}),
                "app_version": state.get("app_version"), "ready": state.get("ready", True)}

    def route_event(self) -> dict:
        """An event to its handler, on the executor if there is one: run
        only if it starts before the request's deadline (issue 29: a launch
        that timed out never happens later), and said delivered to the
        sender as it starts (an interim reply, when asked for)."""
        process = self.process
        event = request.get_json()
        if not isinstance(event, dict) or not isinstance(event.get("name"), str):
            raise HTTPError(400, "an event is a JSON object with a string 'name'")
        name = event["name"]
        handler = process.event_handlers.get(name)
        if handler is None:
            raise HTTPError(404, "no handler for event %r; registered: %s"
                            % (name, ", ".join(sorted(process.event_handlers)) or "none"))
        environ, started = request.environ, []
        delivered = environ.get("tcbon.delivered")

        def starts() -> None:
            started.append(True)
            if delivered is not None:
                delivered()
        call = self.handler(handler, event, environ.get("tcbon.deadline"), starts)
        try:
            result = call() if process.executor is None else process.executor.submit(call)
            # A Future (or a handler that takes long) holds the reply until
            # it is handled, or the sender's deadline: then it gave up.
            while _is_future(result):  # up to the sender's time (no limit if it gave none)
                result = result.result(request.environ.get("tcbon.timeout"))
            if hasattr(result, "__await__"):
                getattr(result, "close", lambda: None)()
                raise TypeError("async def handlers need Process(executor="
                                "tcbon.AsyncioExecutor(loop))")
        except _Stopping:
            raise HTTPError(503, "stopping") from None
        except _Expired:
            raise HTTPError(504, "the sender's deadline passed before the handler for event "
                            "%r could start: it did not run" % name) from None
        except Exception as exc:
            from concurrent.futures import TimeoutError as FutureTimeout
            if isinstance(exc, FutureTimeout):  # the sender's time is up: see _Client.answer
                raise HTTPError(504, "busy" if started else "expired") from None
            process.log.exception("the handler for event %r failed", name)
            raise HTTPError(500, "the handler for event %r failed: %s: %s"
                            % (name, type(exc).__name__, exc)) from None
        reply = {"success": True}
        if isinstance(result, dict):
            reply.update(result)
        elif result is not None:
            reply["result"] = result
        return reply

    def route_stop(self) -> dict:
        """Stop; answer once stopped (the lock released), so that the
        sender knows this primary is gone, whoever runs next."""
        if self.lock is None:  # inert: not (or no longer) the primary
            raise HTTPError(503, "stopping")
        asked = request.get_json(silent=True)
        if isinstance(asked, dict) and asked.get("handover") is True and not self.asked.opened:
            self.handing_over = True  # a successor replaces us (start(replace=...))
        if request.environ.get("REMOTE_ADDR") == "in-process":
            self.stop()  # on the thread that runs the handlers: here
        else:
            self.stop_soon()
            self.done.wait()
        reply = {"success": True, "stopped": True, "message": "%s stopped" % self.process.name}
        if self.handing_over:
            reply["handover"] = self.handed
        return reply

    def handler(self, handler: Callable, event: dict, deadline: float | None = None,
                delivered: Callable[[], Any] | None = None) -> Callable[[], Any]:
        """handler(event) as the executor runs it: not at all once a stop
        was asked for (the closing app must not tell a launch that it took
        its work), nor past deadline (time.monotonic(): the sender gave
        up); delivered() as it starts; known there as a handler (see
        Process.stop)."""
        def call() -> Any:
            if self.asked.opened:
                raise _Stopping()
            if deadline is not None and time.monotonic() > deadline:
                raise _Expired()
            if delivered is not None:
                delivered()
            outer, _local.handling = getattr(_local, "handling", False), True
            try:
                return handler(event)
            finally:
                _local.handling = outer
        return call


def _submit_later(executor: Any, fn: Callable[[], Any]) -> Any:
    """Queue fn on an executor, never running it in the calling frame."""
    return getattr(executor, "submit_later", executor.submit)(fn)


class _LazyLog:
    """Stands for a Process' logger until something really logs."""

    def __init__(self, process: Process) -> None:
        self._process = process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._process.log, name)


def _serving(process: Process) -> _Primary:
    """The primary part that answers a Process' routes; while there is none
    (the app driven in-process through wsgi, a request after a stop), an
    inert one: its events run at once, and it refuses to stop."""
    return process._primary or _Primary(process, None, ("", ""))


class _Becoming:
    """Becoming the primary of a Process: take the name's lock (or a free
    slot), or, with replace, stop the primary that runs and take its place,
    with the successor lock held (its on_handover() state handed over);
    then start the primary part."""

    def __init__(self, process: Process) -> None:
        self.process = process

    def become(self, wait: _Wait, replace: Any = False, signals: bool = False,
               waiter: bool = False) -> None:
        process = self.process
        replace = _check_replace(replace)
        if replace == "older" and process.version is None:
            raise UsageError("replace='older' compares versions: pass Process(..., "
                             "version='1.4.2') too")
        if not process.is_primary:
            process.handed_over = None
        if not replace:
            return self.take_over(wait, signals, waiter)
        own = self.own_instance()
        if own is not None:  # a tool reloaded in its host: its own instance goes
            if not self.replaces(replace, own.state):
                raise self.kept(own.state, "this process already runs instance %s of "
                                 "%r" % (own.slot, process.name))
            process.handed_over = self.stop_for_successor(own.state, wait)
            return self.take_over(wait, signals, waiter)
        if process.instances_allowed:
            return self.take_over(wait, signals, waiter)
        return self.replace_it(wait, replace, signals, waiter)

    def replace_it(self, wait: _Wait, replace: Any, signals: bool, waiter: bool) -> None:
        """Take the name's own slot from the primary that holds it, if
        replace says so. While a launch holds the successor lock, other
        launches and clients leave the primary's lock to it (_Finder), so
        that the state handed over reaches the one that asked for it; one
        that waits here looks again at who runs once the launch before it
        is done."""
        process = self.process
        try:
            return self.take_over(wait, signals, waiter)
        except ProcessExists as exc:  # to be replaced, perhaps: with the successor lock held
            seen = (exc.pid, exc.address)
        process._succession = process._finder.side_lock("successor", wait, "replacing the primary")
        try:
            try:
                return self.take_over(wait, signals, waiter)
            except ProcessExists as exc:
                state = _live_state(process._finder.files()[1])
                if state is None or (state["pid"], state["address"]) != (exc.pid, exc.address):
                    raise
                if seen != (exc.pid, exc.address) and replace != "older":
                    raise  # another launch replaced it first: that one stays
                if not self.replaces(replace, state):
                    raise self.kept(state, str(exc)) from None
            process.handed_over = self.stop_for_successor(state, wait)
            return self.take_over(wait, signals, waiter)  # once: one that took over stays
        finally:
            succession, process._succession = process._succession, None
            if succession is not None:
                succession.release()

    def replaces(self, replace: Any, state: dict) -> bool:
        """Whether start(replace=...) replaces the primary that published state."""
        process = self.process
        if replace == "older":
            return _older(state.get("app_version"), process.version)
        if callable(replace):
            return bool(replace(_public(state)))
        return True

    def kept(self, state: dict, what: str) -> ProcessExists:
        """ProcessExists for a primary that replace= keeps."""
        process = self.process
        theirs = state.get("app_version")
        why = ("it runs version %s, not older than %s" % (theirs, process.version)
               if theirs is not None else "replace= chose to keep it")
        return ProcessExists("%s; %s" % (what, why), process.name, state["pid"], state["address"])

    def own_instance(self) -> _Primary | None:
        """The primary of this name that this process runs through another
        Process object (a tool reloaded in its host)."""
        process = self.process
        for primary in list(_primaries or ()):
            if (primary.process is not process and primary.state
                    and primary.process._finder.stem == process._finder.stem):
                return primary
        return None

    def stop_for_successor(self, state: dict, wait: _Wait) -> Any:
        """Stop the primary that published state, asking for its
        on_handover() state; return that state. One of this process whose
        handlers run on this thread is stopped here: over HTTP, it would
        wait for this very thread."""
        process = self.process
        local = process._finder.local(state)
        if local is not None:
            if not local.asked.opened:
                local.handing_over = True
            local.stop()
            return local.handed
        return process._finder.stop(state, wait, handover=True)

    def take_over(self, wait: _Wait, signals: bool, waiter: bool) -> None:
        """Take the lock (or a slot) and start the primary part, unless the
        Process is the primary already."""
        global _primaries
        process = self.process
        if _primaries is None:
            import weakref
            _primaries = weakref.WeakSet()
            if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
                os.register_at_fork(after_in_child=_forget_primaries_after_fork)
        with process._lifecycle:
            if process._primary is not None:
                return
            _ensure_private_dir(process.app_dir)
            slot, lock = process._finder.take(wait, replacing=process._succession is not None)
            primary = process._primary = _Primary(process, lock, process._finder.files(slot), slot)
            primary.start(signals, waiter)  # on failure, it lets go of everything
            process._inherited = False
            process.wsgi_thread = primary.thread


def _launch_event(process: Process, argv: list[str] | None, cwd: str | None, data: Any,
                  stdin: str | None, primary: bool = False) -> dict:
    """The second-instance event of a launch: this one's, or (primary) the
    primary's own, which keeps its activation token for its window."""
    import fnmatch
    env = {key: value for key, value in os.environ.items()
           if any(fnmatch.fnmatchcase(key, pattern) for pattern in process.forward_env)}
    return {"name": SECOND_INSTANCE, "argv": _this_argv() if argv is None else list(argv),
            "cwd": _cwd() if cwd is None else cwd, "data": data, "env": env,
            "activation_token": None, "stdin": stdin, "primary": primary}


def _handoff(process: Process, argv: list[str] | None, cwd: str | None, data: Any,
             stdin: str | None, wait: _Wait, to: Any = None, where: dict | None = None) -> Any:
    """The second-instance event of this launch to the primary (see
    Process.handoff), within wait."""
    keys = ("XDG_ACTIVATION_TOKEN", "DESKTOP_STARTUP_ID")
    event = _launch_event(process, argv, cwd, data, stdin)
    event["activation_token"] = next((os.environ[k] for k in keys if os.environ.get(k)), None)

    def found(state: dict) -> None:  # a primary takes it: the token is spent here
        for key in keys:
            os.environ.pop(key, None)
        _platform.allow_foreground(state["pid"])
    return process._request("POST", "event", event, wait, to, where, found=found, ack=True)



class _Launch:
    """One launch through Process.main(): it hands its argv over to the
    primary (or to the instance choose() names), or becomes the primary and
    serves until stopped, reporting a failure on stderr as an exit code.

    Attributes:
        process (Process): whose settings, hooks and handlers it uses.
        own_argv (list): the first launch's argv for its handler, or None.
    """

    def __init__(self, process: Process, own_argv: list[str] | None = None,
                 run: Callable[[], Any] | None = None, quit: Callable[[], Any] | None = None,
                 unguarded: bool = False) -> None:
        self.process, self.own_argv = process, own_argv
        self.loop, self.quit, self.unguarded = run, quit, unguarded

    def run(self, argv: list[str], wait: _Wait, forward_stdin: bool, replace: Any) -> int:
        """Hand over to the primary, or become it and serve: the exit code."""
        process = self.process
        while True:
            if wait.over():  # each round keeps to the launch's deadline (issue 30)
                return self.report(Timeout(
                    "%r: the launch found no primary to take it, nor became one, within "
                    "%.1f s; retry with a longer timeout" % (process.name, wait.limit or 0.0),
                    process.name, wait.limit or 0.0))
            try:
                own = replace and _Becoming(process).own_instance()
                if process.instances_allowed and not own:
                    chosen = self.chosen(argv)  # several: a new one, or where choose() says
                    if chosen is not None:
                        return self.hand_over(argv, forward_stdin, wait, chosen)
                try:
                    _Becoming(process).become(wait, replace, signals=True,
                                              waiter=self.loop is None)
                except ProcessExists as exc:
                    if self.elsewhere_in_this_process():  # a notebook's second run: say it
                        return self.report(exc)
                    return self.hand_over(argv, forward_stdin, wait)
            except ProcessDoesNotExist:
                continue  # it went away meanwhile: choose again, or take its place
            except (ValueError, Error) as exc:  # ValueError: bad input, nothing sent
                return self.refused(exc)
            return self.serve()

    def hand_over(self, argv: list[str], forward_stdin: bool, wait: _Wait,
                  to: Any = None) -> int:
        """A later launch: argv to the primary (to: the instance chosen)."""
        stdin = _piped_stdin() if forward_stdin else None
        return _relay(_handoff(self.process, argv, None, None, stdin, wait, to))

    def elsewhere_in_this_process(self) -> bool:
        """This process is the primary through another object, and this is
        not a relaunch on the thread of its handlers (a DCC shelf button,
        which hands over directly): a notebook cell run again, whose new
        handlers would silently go unused (issue 29). main() says what
        start() says instead."""
        process = self.process
        mine = [primary for primary in list(_primaries or ()) if primary.process is not process
                and primary.process._finder.stem == process._finder.stem]
        return bool(mine) and not any(primary.serves_this_thread() for primary in mine)

    def chosen(self, argv: list[str]) -> int | None:
        """The id of the instance choose() sends this launch to, or None
        for a new instance.

        Raises:
            UsageError: choose() returned something else.
            Error: choose() returned an id no instance has (issue 30).
        """
        process = self.process
        entries = process.instances()
        if not entries:
            return None
        chosen = process.choose(_launch_event(process, argv, None, None, None), entries)
        if isinstance(chosen, dict):
            chosen = chosen.get("id")
        if chosen is None:
            return None
        if _instance_id(chosen) is None:
            raise UsageError("choose() must return one of the instances, its id, or None "
                             "for a new one; it returned %r" % (chosen,))
        if _instance_id(chosen) not in [entry.get("id") for entry in entries]:
            raise Error("choose() returned instance %s of %r, which is not running (those "
                        "running: %s); return one of the instances it is given, its id, or "
                        "None for a new one" % (chosen, process.name, ", ".join(
                            str(entry.get("id")) for entry in entries)))
        return _instance_id(chosen)

    def serve(self) -> int:
        """Run the app's main loop, or wait for a stop request; then stop.
        Ctrl-C's handler is in place before run(): the first stops (or,
        without an executor to run the stop, interrupts run() once), later
        ones only hurry the stop (a frozen app's bootloader forwards one
        more: pyinstaller#2483)."""
        process, run = self.process, self.loop
        primary = process._primary
        if primary is None:  # stopped during on_start, from another thread
            return EXIT_OK
        try:
            primary.handle_signals(("SIGINT",), interrupt=run is not None
                                   and process.executor is None)
            if self.own_argv is not None:
                self.open_own_launch(primary)
            if run is not None:
                primary.loop_quit = self.quit or _loop_quit(run)
                primary.in_run = True  # a stop from now on ends run() (issue 28)
                if not primary.done.opened:  # not if stopped already: nothing would end it
                    run()
            else:
                primary.wait(primary.asked)
        except KeyboardInterrupt:
            process._note(_INFO, "%s interrupted", process.name)
        finally:
            primary.loop_over.open()
            try:
                primary.stop()
            finally:
                primary.end_wait()
        return primary.exit_code

    def open_own_launch(self, primary: _Primary) -> None:
        """The first launch's argv, through the door of every later one:
        the second-instance handler, on the executor's thread (now, if
        that is this one; else once its loop runs)."""
        process = self.process
        handler = process.event_handlers.get(SECOND_INSTANCE)
        if handler is None or self.own_argv is None:
            return
        call = primary.handler(handler, _launch_event(process, self.own_argv, None, None, None,
                                                      True))
        executor = process.executor
        if executor is None or getattr(executor, "is_own_thread", _nothing)():
            try:
                result = call()
            except _Stopping:
                return None  # stopped during on_start: nothing to open
            except Exception:  # noqa: BLE001 - logged, as a later launch's would be
                return process._note(_ERROR, "%s: the handler of the first launch failed",
                                     process.name, exc_info=True)
            return primary.took_own_launch(result)
        future = _submit_later(executor, call)
        if _is_future(future):
            future.add_done_callback(primary.took_own_launch)

    @staticmethod
    def not_a_launch(process: Process, worker: str) -> int:
        """main() in a multiprocessing worker: never a launch (it would wait
        for the primary that waits for it). Said at once; a frozen app's
        worker then does its work (freeze_support() runs it and exits),
        so that its pool neither hangs nor starts worker after worker."""
        code = _Launch(process).report(Error(
            "this process is a multiprocessing worker, not a launch (%s): call "
            "multiprocessing.freeze_support() first thing under "
            "if __name__ == '__main__':, before main()" % worker))
        if getattr(sys, "frozen", False):
            import multiprocessing
            multiprocessing.freeze_support()  # returns only if it is no worker after all
        return code

    def refused(self, exc: Exception) -> int:
        """It cannot become the primary: report why, or, unguarded, run
        alone where the guard cannot work."""
        if self.unguarded and isinstance(exc, (StateError, _CannotListen)):
            return self.run_alone(exc)
        return self.report(exc)

    def run_alone(self, exc: Exception) -> int:
        """main(unguarded=True) where the guard cannot work (issue 28): said
        once on stderr, then the app runs as if it were the only one. No
        lock, no server: a later launch cannot reach it and runs alone too.
        With run(), signals are left as Python has them."""
        process, run = self.process, self.loop
        _say(sys.stderr, "%s: warning: running without the single-instance guard: %s\n"
             % (process.name, exc))
        stopped, code = _Gate(), EXIT_OK
        undo = _nothing if run is not None else _handle_signals(_platform.stop_signals,
                                                                lambda _: stopped.open())
        try:
            process.on_start()
            handler = process.event_handlers.get(SECOND_INSTANCE)
            if self.own_argv is not None and handler is not None:
                event = _launch_event(process, self.own_argv, None, None, None, True)
                executor = process.executor
                if executor is None or getattr(executor, "is_own_thread", _nothing)():
                    code = _relay(handler(event))
                else:
                    _submit_later(executor, lambda: handler(event))
            if run is not None:
                run()
            else:
                while not stopped.wait(_platform.wait_slice):
                    pass
        except KeyboardInterrupt:
            process._note(_INFO, "%s interrupted", process.name)
        finally:
            undo()
            process.on_stop()
        return code

    def report(self, exc: Exception) -> int:
        _say(sys.stderr, "%s: %s\n" % (self.process.name, exc))
        return _exit_code(exc)


class Process:
    """Allows only one instance of an application to run at a time.

    The first ``start()`` for a name takes an OS lock and serves a small WSGI
    app on loopback, publishing its pid, address and a secret token in
    ``pid_file``. Other Process objects of the name (in any process of the
    user) get ProcessExists from start() and talk to the primary with get(),
    send(), handoff() and stop(): always to whoever is the primary now. The
    object is a front: while it is the primary, its primary part (_Primary)
    holds the lock, the server and the stop sequence; finding and reaching a
    primary is _Finder's. docs/api.rst is the reference.

    Attributes:
        log (logging.Logger): the Process' logger.
        wsgi (App): the Flask-like WSGI app; add routes with ``wsgi.route``.
        wsgi_thread (threading.Thread): the thread serving wsgi, once started.
        event_handlers (dict): event name -> handler(event) -> dict or None.
        handed_over: in on_start() of a primary that replaced another, what
            the other's on_handover() returned (JSON); None otherwise.
        name, app_dir, timeout, mutex, version, executor: as given.

    Args:
        name (str): the application's name (a file name: no '/', '..', NUL).
        address (str or int): loopback 'host:port' (or a port of 127.0.0.1)
            to serve on; default: any free port of 127.0.0.1.
        app_dir (str): directory of the lock and state files; default: the
            per-user data directory (see default_app_dir).
        debug (bool): log at DEBUG level (to stderr if logging is not set up).
        timeout (float): default limit, in seconds, of each call (every phase
            of it) and of a stop's wait for requests in progress; None: none.
        executor: where event handlers run: anything with a concurrent.futures
            ``submit(fn)``, e.g. a MainThreadExecutor for a Tk or Qt app, an
            AsyncioExecutor. Default: worker threads, concurrently.
        forward_env (list): names or glob patterns of the variables a later
            launch hands over (``event['env']``); none by default: forwarding
            everything leaks secrets (vscode#327454).
        scope: of whom there is one primary: 'user' (the default), 'session'
            (per login session), 'installation' (per installed copy), or an
            installation's absolute path.
        instances (int or bool): allow at most this many instances at once
            (True: any number), each in a slot of its own, listed, described
            and chosen (see send, choose); every Process of a name must agree.
        version (str): this app's version (``app_version``), for
            ``replace='older'``.
        mutex (str): Windows: a named mutex held while primary, for
            installers (Inno Setup's ``AppMutex``); elsewhere nothing.

    Raises:
        UsageError: a name that cannot be a file name, a non-loopback address,
            a negative timeout, an unknown scope, a bad instances, version or
            mutex (also a ValueError).
        StateError: scope='session' where no login session id is found.
    """

    def __init__(self, name: str, address: str | int | None = None, app_dir: str | None = None,
                 debug: bool = False, timeout: float | None = DEFAULT_TIMEOUT,
                 executor: Any = None, forward_env: Iterable[str] = (),
                 scope: str | os.PathLike = "user",
                 instances: int | bool | None = None, version: str | None = None,
                 mutex: str | None = None) -> None:
        self.name = _check_name(name)
        self.mutex = _check_mutex(mutex)
        self.instances_allowed = _check_instances(instances)
        self.version = _check_version(version)
        self.handed_over: Any = None
        self._succession: _Lock | None = None  # the successor lock, while we replace one
        self._meta: dict = {}
        self._meta_lock = _thread.allocate_lock()
        self.forward_env = [forward_env] if isinstance(forward_env, str) else list(forward_env)
        self._bind = _parse_address(address) if address is not None else ("127.0.0.1", 0)
        self.scope = scope
        self._scope = _scope_suffix(scope)
        self.app_dir = app_dir or default_app_dir(name)
        self.timeout = _check_timeout(timeout)
        self.executor = executor
        self.event_handlers: dict[str, Callable] = {SECOND_INSTANCE: self.on_second_instance}
        self.wsgi_thread: Any = None
        self._primary: _Primary | None = None  # while this object is the primary
        self._inherited = False  # a forked child's copy of a primary (see stop)
        self._lifecycle = _thread.RLock()  # becoming the primary, one at a time
        self._warned_global = False  # mutex: the Global one refused, said once
        self._debug = debug
        self._log: Any = None
        if debug or type(self).setup_logger is not Process.setup_logger:
            self.log  # noqa: B018 - set up now: the app asked for logging
        self.wsgi = App(_LazyLog(self))
        self.wsgi.add_route("/", lambda: _serving(self).route_index())
        self.wsgi.add_route("/event", lambda: _serving(self).route_event(), ["POST"])
        self.wsgi.add_route("/stop", lambda: _serving(self).route_stop(), ["POST"])
        self.setup_wsgi(self.wsgi)

    def __repr__(self) -> str:
        return "<%s %r app_dir=%r address=%r primary=%s>" % (
            type(self).__name__, self.name, self.app_dir, self.address, self.is_primary)

    def __enter__(self) -> Process:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        primary = self._primary  # unless stopped already (remotely, say)
        if primary is not None:
            primary.stop()

    @property
    def log(self) -> Any:
        """The Process' logging.Logger ("tcbon.NAME"), set up on first use:
        a second instance that never logs never imports logging."""
        if self._log is None:
            import logging
            log = logging.getLogger("tcbon." + self.name)
            if self._debug:
                log.setLevel(logging.DEBUG)
                if not log.handlers and not logging.getLogger().handlers:
                    handler = logging.StreamHandler()
                    handler.setFormatter(logging.Formatter("%(levelname).1s:%(name)s> %(message)s"))
                    log.addHandler(handler)
            self._log = log
            self.setup_logger(log)
        return self._log

    @log.setter
    def log(self, value: Any) -> None:
        self._log = value

    def _note(self, level: int, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log, but skip info and debug while nothing imported logging: then
        nobody can have set up a handler that would show them."""
        if level < _WARNING and self._log is None and "logging" not in sys.modules:
            return
        self.log.log(level, message, *args, exc_info=exc_info)

    # What it is -----------------------------------------------------------------
    @property
    def app_dir(self) -> str:
        """The directory of the lock and state files."""
        return self._finder.app_dir

    @app_dir.setter
    def app_dir(self, value: str) -> None:
        self._finder = _Finder(self.name, os.path.abspath(value), self._scope,
                               self.instances_allowed)

    @property
    def pid_file(self) -> str:
        """Full path of the state file holding the primary's pid and address
        (with instances: this instance's own, while it runs)."""
        primary = self._primary
        return primary.pid_file if primary is not None else self._finder.files()[1]

    @property
    def lock_file(self) -> str:
        """Full path of the lock file (kept forever; never delete it by hand;
        with instances: this instance's own, while it runs)."""
        primary = self._primary
        return primary.lock_file if primary is not None else self._finder.files()[0]

    @property
    def instance_id(self) -> int | None:
        """With instances: this instance's id (its slot) while it runs; else None."""
        primary = self._primary
        return primary.slot if primary is not None else None

    @property
    def is_primary(self) -> bool:
        """True while this object is the primary (until its stop has released the lock)."""
        return self._primary is not None

    @property
    def address(self) -> str | None:
        """While the primary: the address it serves on; else the one asked
        for (None: any free port)."""
        if self._primary is not None and self._primary.state:
            return self._primary.state["address"]
        return None if self._bind == ("127.0.0.1", 0) else _format_address(*self._bind)

    @property
    def pid(self) -> int | None:
        """While the primary: this process' id; else None (ProcessExists
        and info() tell the primary's)."""
        return (self._primary.state.get("pid") if self._primary is not None else None)

    @property
    def started(self) -> float | None:
        """While the primary: when it started serving (time.time())."""
        return (self._primary.state.get("started") if self._primary is not None else None)

    @property
    def wsgi_running(self) -> bool:
        """True while this object's wsgi_thread serves requests."""
        return self.wsgi_thread is not None and self.wsgi_thread.is_alive()

    @property
    def running(self) -> bool:
        """True while a primary of this name runs, from any Process object
        (with instances: any instance)."""
        return self.is_primary or self._finder.running()

    def start(self, timeout: float | None = _DEFAULT, replace: Any = False) -> None:
        """Become the primary: take the lock, serve wsgi, publish the address.

        If the lock is held by a primary starting up or stopping, waits for
        it, at most ``timeout`` seconds. With ``replace``, stops the running
        primary and takes its place (like GApplication's --replace), its
        on_handover() state handed over (handed_over): True replaces any,
        'older' one whose version is older than this one's, a callable one
        for which it returns True given its info. With instances, it replaces
        this process' own instance (a tool reloaded in its host).

        Raises:
            ProcessExists: another is the primary (its pid and address), or
                this process is already (it says so), or one replace keeps.
            Timeout: the lock stayed held with no address for too long.
            StateError: app_dir or its files cannot be used safely.
            Error: the server cannot listen on the address given.
            UsageError: a bad replace, or 'older' without a version.
        """
        try:
            _Becoming(self).become(_Wait(self._limit(timeout)), replace)
        except ProcessExists as exc:  # the usual answer: a traceback of this call alone
            raise exc.with_traceback(None) from None

    def run_forever(self) -> None:
        """Start, then serve until stopped: by stop() (from here, another
        thread or another process), Ctrl-C or SIGTERM. Returns once stopped.

        Raises:
            ProcessExists: another instance is the primary.
        """
        try:
            _Becoming(self).become(_Wait(self.timeout), signals=True, waiter=True)
        except ProcessExists as exc:  # the usual answer: a traceback of this call alone
            raise exc.with_traceback(None) from None
        _Launch(self).serve()

    def main(self, argv: list[str] | None = None, run: Callable[[], Any] | None = None,
             timeout: float | None = _DEFAULT, forward_stdin: bool = False,
             own_launch: bool = True, replace: Any = False,
             quit: Callable[[], Any] | None = None, unguarded: bool = False) -> int:
        """The one call a single-instance app needs: ``sys.exit(app.main())``.

        The first launch becomes the primary: its own ``argv`` goes to the
        ``second-instance`` handler (``event['primary']`` True), then it
        calls ``run()`` (your main loop) or serves until stopped, and stops.
        A later launch hands ``argv`` over (see handoff), writes the reply's
        ``stdout`` and ``stderr`` and returns its ``exit_code``; one during a
        stop becomes the next primary. SIGTERM and Ctrl-C stop the primary,
        also in an idle Tk, Qt or GTK loop (with an executor); every stop
        ends ``run()`` (``quit``), or the process 2 s later. The lifecycle
        contract in docs/api.rst says all of it.

        Args:
            argv (list): what to hand over; default ``sys.argv``.
            run (callable): the primary's main loop; stop() follows its return.
            timeout (float): for the whole launch; default the Process', or
                the environment's TCBON_TIMEOUT (seconds, or "none"). A
                handler not started by then never runs (exit 4); one started
                but not answered runs once (``Busy``, exit 8).
            forward_stdin (bool): a later launch's piped stdin goes over as
                ``event['stdin']`` (``cmd | app -``).
            own_launch (bool): False keeps the first launch's argv from the
                handler (an app that opens it in on_start itself).
            replace: as start()'s ('older': a newer version replaces the
                running one, its on_handover() state handed over).
            quit (callable): what ends run()'s loop; default the quit of
                run's object (``root.quit``, ``app.quit``), ``Gtk.main_quit``.
            unguarded (bool): where the guard cannot work (a read-only, full
                or foreign app_dir, no locks, loopback blocked), say why once
                and run the app alone (no lock, no server); else exit 5 (6).

        Returns:
            The launch's exit code: the primary's, or for an error said on
            stderr python -m tcbon's (EXIT_*): 3 refused, 4 not taken in
            time, 5 state directory unusable, 6 any other failure, 8 taken
            but not answered in time, 130 interrupted by Ctrl-C.
        """
        worker = _worker_sign()
        if worker is not None:
            return _Launch.not_a_launch(self, worker)
        argv = _this_argv() if argv is None else list(argv)
        launch = _Launch(self, argv if own_launch else None, run, quit, unguarded)
        try:
            limit = self._limit(_env_timeout() if timeout is _DEFAULT else timeout)
            return launch.run(argv, _Wait(limit), forward_stdin, replace)
        except UsageError as exc:  # TCBON_TIMEOUT
            return launch.report(exc)
        except KeyboardInterrupt:  # a later launch's (the primary handles its own)
            _say(sys.stderr, "%s: interrupted (Ctrl-C)\n" % self.name)
            return EXIT_INTERRUPTED

    # Stopping ---------------------------------------------------------------
    def stop(self, timeout: float | None = _DEFAULT, to: Any = None,
             where: dict | None = None, kill_after: float | None = None) -> list[int] | None:
        """Stop whoever is the primary now, and return once it has stopped.

        On the primary: withdraws its address, runs on_stop once, stops the
        server (up to timeout for requests in progress, which then get an
        error reply) and releases the lock; from one of its handlers it only
        asks (the reply goes out first). Elsewhere: asks the primary to stop
        and returns once it released its lock. A forked child's copy of the
        primary object does nothing. With instances, an instance's object
        stops itself; any other stops the most recently active one, the one
        ``to`` or ``where`` choose, or (``to='all'``) every one.

        With ``kill_after`` (seconds), a primary that has not stopped that
        long after being asked (hung, SIGSTOPped) is ended: the process that
        holds its lock, verified in the OS's lock table (Linux), never by
        pid alone; stop() returns once it is gone.

        Returns:
            With kill_after: the pids it ended (empty if all stopped when
            asked); else None.

        Raises:
            ProcessDoesNotExist: nothing runs (or nothing the rule accepts).
            Timeout: the primary did not stop in time.
            Error: kill_after, and the holder cannot be verified here (macOS,
                Windows, another pid namespace): nothing was ended.
        """
        limit = self._limit(timeout)
        primary = self._primary
        if self._inherited:
            return None if kill_after is None else []
        if kill_after is not None:
            _check_timeout(kill_after)
        if _check_target(self.instances_allowed, self.name, to, where) or primary is None:
            ended = self._finder.stop_chosen(_Wait(limit), to, where, kill_after)
            return None if kill_after is None else ended
        if _in_a_handler():
            primary.stop_soon()
        else:
            primary.drain = limit  # for requests in progress, unless a stop runs already
            primary.stop()
        return None if kill_after is None else []

    # Talking to the primary -----------------------------------------------------
    def handoff(self, argv: list[str] | None = None, cwd: str | None = None,
                data: Any = None, timeout: float | None = _DEFAULT,
                stdin: str | None = None, to: Any = None, where: dict | None = None) -> Any:
        """Send the ``second-instance`` event to the primary; return its reply.

        The event is ``{'name': 'second-instance', 'argv': argv, 'cwd': cwd,
        'data': data, 'env': {...}, 'activation_token': ..., 'stdin': ...}``:
        argv as a JSON list, exactly; ``cwd`` None if this launch's folder
        was deleted; ``env``, the variables forward_env names; the launch's
        activation token (``XDG_ACTIVATION_TOKEN`` or ``DESKTOP_STARTUP_ID``,
        removed from this environment once a primary takes it), for the
        primary to raise its window with (on Windows it may take the focus).

        Args:
            argv (list): default ``sys.argv``; cwd (str): default the
                working directory; data: anything JSON; stdin (str): text
                for the primary (see main's forward_stdin).
            timeout (float): for the whole hand-off (see main()).
            to, where: with instances, which one gets it (see send).

        Raises:
            ProcessDoesNotExist, Timeout, Busy, RequestError, Error: as send().
        """
        return _handoff(self, argv, cwd, data, stdin, _Wait(self._limit(timeout)), to, where)

    def deliver(self, items: Iterable[str], timeout: float | None = _DEFAULT) -> Any:
        """Hand documents or links that reached this app by another way than
        a launch's argv to the ``second-instance`` handler, through the door
        of every launch: the event's argv is ``[argv0, '--', *items]``. On
        macOS a double-clicked document or a clicked ``myapp://`` link goes
        to the running app as an Apple Event, not to a new launch
        (pyinstaller#5276): call this from the toolkit's callback for it
        (Tk's ``::tk::mac::OpenDocument``, Qt's ``QFileOpenEvent``).

        Returns:
            The handler's reply.

        Raises:
            As handoff().
        """
        argv = _this_argv()[:1] or [self.name]
        return self.handoff(argv=argv + ["--"] + [str(item) for item in items], timeout=timeout)

    def wait_for_exit(self, timeout: float | None = _DEFAULT) -> None:
        """Block until no primary of this name runs, without asking it to
        stop: for an updater or installer, which must not replace files
        under a running app.

        Raises:
            Timeout: it still runs after timeout seconds.
        """
        limit = self._limit(timeout)
        _Wait(limit).until(lambda: None if self._finder.running() else True, lambda: Timeout(
            "%r still runs after %.1f s" % (self.name, limit or 0.0), self.name, limit or 0.0))

    def get(self, route: str = "/", timeout: float | None = _DEFAULT, to: Any = None,
            where: dict | None = None, start: str | list[str] | None = None) -> Any:
        """Send a GET request to the primary's wsgi server.

        With ``start``, a command starts the app first if none runs (see send).

        Returns:
            The decoded JSON reply (usually a dict); for ``to='all'``, a
            dict of them by instance id (see send).

        Raises:
            ProcessDoesNotExist, Timeout, RequestError (a 4xx/5xx answer), Error.
        """
        return self._request("GET", route, None, _Wait(self._limit(timeout)), to, where, start)

    def send(self, route: str, payload: Any = None, timeout: float | None = _DEFAULT,
             to: Any = None, where: dict | None = None,
             start: str | list[str] | None = None) -> Any:
        """Send a POST request with a JSON payload to the specified route.

        With ``instances``, ``to`` and ``where`` choose the instance: by
        default the most recently active (touch()); ``where={'project': 'x'}``
        the most recent whose metadata (describe()) has these values; ``to=ID``
        that one; ``to=callable`` the one ``callable(instances)`` returns;
        ``to='all'`` every one, at once: then the result is ``{id: reply}``,
        a failed one's reply being its tcbon.Error. With ``start`` (the app's
        command, a list or a string), a call that finds no primary answering
        starts it, detached, and sends once it answers, within ``timeout``;
        racing launches start it once.

        Examples:
            >>> import tcbon
            >>> p = tcbon.Process('test')
            >>> p.send('event', {'name': 'ack'})  # doctest: +SKIP

        Returns:
            The decoded JSON reply, e.g. ``{'success': True, ...}``.

        Raises:
            ProcessDoesNotExist: none runs (or none the rule accepts), or the
                start command cannot be run or exits before the app answers.
            Timeout, RequestError (a 4xx/5xx answer), Error.
            UsageError: to or where without instances, or of the wrong kind;
                a start that is not a command.
        """
        payload = {} if payload is None else payload
        return self._request("POST", route, payload, _Wait(self._limit(timeout)), to, where,
                             start)

    def info(self, timeout: float | None = _DEFAULT, to: Any = None,
             where: dict | None = None) -> Any:
        """Ask the primary about itself: name, pid, address, version, start
        time (with instances: its id, metadata and last activity too)."""
        return self.get("/", timeout, to, where)

    def _request(self, method: str, route: str, payload: Any, wait: _Wait,
                 to: Any = None, where: dict | None = None, start: Any = None,
                 found: Callable[[dict], Any] | None = None, ack: bool = False) -> Any:
        """The one path of get, send, handoff: the finder's call, and with
        start, the app started whenever no primary will answer, a stop in
        progress included (issue 30), then the call made again."""
        _check_target(self.instances_allowed, self.name, to, where)
        command = None if start is None else _check_start(start)
        while True:
            try:
                if to == "all":
                    return self._finder.call_all(method, route, payload, wait, where)
                return self._finder.call(method, route, payload, wait, to, where, found, ack)
            except ProcessDoesNotExist:
                if command is None:
                    raise
            self._finder.start_app(command, wait)
            command = None  # once: a second "none runs" is the answer

    # Starting on demand ----------------------------------------------------------
    # Several instances ---------------------------------------------------------
    def describe(self, **fields: Any) -> None:
        """Publish metadata about this instance, for choosers and listings
        (``where={'project': ...}``, ``python -m tcbon NAME list``): say
        ``title``, ``project``, the ``document`` it shows. Fields are
        merged into those given before; None removes one. Given before the
        start, they are published with it; while it runs, its state file
        is written again at once (atomically).

        Raises:
            ValueError: a value is not JSON, or all of them take more than 32 KiB.
        """
        import json
        with self._meta_lock:
            meta = {k: v for k, v in dict(self._meta, **fields).items() if v is not None}
            try:
                size = len(json.dumps(meta))
            except (TypeError, ValueError) as exc:
                raise UsageError("describe() takes JSON values only: %s" % exc) from None
            if size > _MAX_META:
                raise UsageError("describe() got %d bytes of JSON, at most %d: publish a "
                                 "file name rather than its content" % (size, _MAX_META))
            self._meta = meta
            primary = self._primary
            if primary is not None:
                primary.republish(meta=dict(meta))

    def touch(self) -> None:
        """Record that this instance was active just now (its window got
        the focus, say): the default rule of send(), handoff() and main()
        chooses the most recently active instance (vscode#118718)."""
        primary = self._primary
        if primary is not None:
            primary.republish(active=time.time())

    def instances(self) -> list[dict]:
        """The running instances of this name, by id (see tcbon.instances);
        the primary alone for an app of one instance.

        Raises:
            StateError: app_dir cannot be used safely.
        """
        return self._finder.listing()

    def register(self, schemes: Iterable[str] = (), types: Iterable[str] = (),
                 title: str | None = None) -> list[str]:
        """Make links and files of some types start this app with this
        launch's own command (a frozen app's executable; ``python -m
        MODULE``; the interpreter as run and the script's absolute path):
        tcbon.register with command=None. Call it from the installed app.

        Returns:
            What was written: file paths, or registry keys.

        Raises:
            UsageError: a bad scheme, type or title; nothing to register; no
                command of its own (python -c: call tcbon.register).
            Error: not done at run time here (macOS), or a file or key
                could not be written.
        """
        return register(self.name, schemes, types, None, title)

    def unregister(self) -> list[str]:
        """Remove what register wrote for this name, and nothing else.

        Returns:
            What was removed (empty if nothing was registered).

        Raises:
            Error: registering is not done at run time here (macOS), or a
                file or key could not be removed.
        """
        return unregister(self.name)

    def choose(self, event: dict, instances: list[dict]) -> Any:
        """Override (or assign ``app.choose = function``) to say where a
        launch goes when several instances may run: ``main()`` calls it in
        the launch, with its ``second-instance`` event and the running
        instances (as tcbon.instances lists them; never empty). Return one
        of them (or its id) to hand the launch over to it, or None to start
        a new instance. The default is None: every launch is a new
        instance, until ``instances`` run; then launches go to the most
        recently active one."""
        return None

    def _limit(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is _DEFAULT else _check_timeout(timeout)

    # Routes and events -------------------------------------------------------
    def register_event_handler(self, event: str, handler: Callable) -> None:
        """Call handler(event_dict) for events named ``event``; its dict
        return value is merged into the reply."""
        self.event_handlers[event] = handler

    def unregister_event_handler(self, event: str) -> None:
        """Remove the handler of an event (no error if there is none)."""
        self.event_handlers.pop(event, None)

    def on(self, event: str) -> Callable:
        """Decorator form of register_event_handler."""
        def decorator(handler: Callable) -> Callable:
            self.register_event_handler(event, handler)
            return handler
        return decorator

    # Hooks -------------------------------------------------------------------
    def setup_logger(self, log: Any) -> None:
        """Override to add handlers to the Process' logger."""

    def setup_wsgi(self, wsgi: App) -> None:
        """Override to add routes: ``@wsgi.route('/count')``."""

    def on_start(self) -> None:
        """Override to prepare the application; runs before the server serves."""

    def on_stop(self) -> None:
        """Override to tear down the application; runs before the server stops."""

    def on_handover(self) -> Any:
        """Override to hand state (open documents, queued work: JSON) to a
        successor that replaces this primary (``start(replace=...)``, e.g.
        a newer version, or a tool reloaded in its host): the successor
        finds it in ``handed_over`` during its on_start(). Runs in the
        stop sequence, on the thread that runs on_stop, once new requests
        are refused and before on_stop. Default: None."""
        return None

    def on_second_instance(self, event: dict) -> Any:
        """Override (or use ``@app.on('second-instance')``) to handle a later
        launch: event has ``argv``, ``cwd`` and ``data``. Return a dict, which
        may hold ``exit_code``, ``stdout`` and ``stderr`` for that launch."""
        self._note(_INFO, "a second instance started with %r in %s", event.get("argv"),
                   event.get("cwd"))
        return None


def instances(name: str, app_dir: str | None = None,
              scope: str | os.PathLike = "user") -> list[dict]:
    """List the running instances of an app that allows several
    (``Process(name, instances=...)``): exactly those that hold their lock,
    so never one that crashed or was killed, whatever its files say; one
    still starting up (nothing published yet) is not listed.

    Args:
        name, app_dir, scope: as given to Process.

    Returns:
        A list by id of dicts: ``id``, ``pid``, ``host``, ``address``,
        ``started`` and ``active`` (time.time() values), ``version`` (of
        tcbon), ``name``, ``meta`` (what the instance published with
        describe()); never the token.

    Raises:
        ValueError: a bad name or scope.
        StateError: app_dir cannot be used safely.
    """
    directory = os.path.abspath(app_dir or default_app_dir(_check_name(name)))
    return _Finder(_check_name(name), directory, _scope_suffix(scope), _MAX_INSTANCES).listing()


# =============================================================================
# Optional parts: executors for UI loops and DCC hosts, desktop windows,
# links and file types, the command line. Nothing above uses them; an app
# that needs none of them could do without this half of the file.
# =============================================================================

# Executors -------------------------------------------------------------------
# Where event handlers run. Anything with a concurrent.futures-style submit()
# will do; these cover UI main loops, DCC hosts and asyncio.
def _host_module(name: str) -> Any:
    """A host application's own module (not a dependency of tcbon: it is
    there only inside that host).

    Raises:
        Error: not inside that host.
    """
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise Error("%s cannot be imported: this is not running inside its host "
                    "application (%s)" % (name, exc)) from None


class MainThreadExecutor:
    """Run submitted calls on the thread that calls run_pending() (a UI's):
    the thread that made it, until another calls run_pending(). A call
    submitted from that very thread runs at once (queued, it would wait
    for the thread that waits for it).

    Args:
        wake (callable): called from the submitting thread after each
            submit, to make the UI thread call run_pending() soon; e.g. emit
            a queued Qt signal, or ``root.event_generate('<<Wake>>',
            when='tail')`` in Tk. Not needed by a loop that blocks in
            ``run_pending(timeout)``, nor under ``run_forever()``.
    """

    def __init__(self, wake: Callable[[], Any] | None = None) -> None:
        import collections
        import concurrent.futures  # noqa: F401 - here, not first on a server thread (issue 20)
        self.wake = wake
        # Not queue.SimpleQueue: a signal handler may submit (a stop) while
        # this thread waits in run_pending(), and PyPy's SimpleQueue is Python
        # on a Condition, whose lock that very wait holds. A deque's append
        # and a raw lock's release are safe there everywhere.
        self._queue: Any = collections.deque()
        self._owner = _thread.get_ident()
        self._ran = False  # run_pending() was ever called
        self._bell = _thread.allocate_lock()  # released when work arrives
        self._bell.acquire()

    @classmethod
    def blender(cls, interval: float = 0.1) -> MainThreadExecutor:
        """One for Blender, made on its main thread: in the GUI a
        ``bpy.app.timers`` function runs the calls every interval seconds;
        with --background, where timers never fire, ``run_forever()`` on the
        main thread runs them."""
        timers = _host_module("bpy.app.timers")
        executor = cls()

        def run_pending() -> float:
            executor.run_pending()
            return interval
        timers.register(run_pending, first_interval=interval, persistent=True)
        return executor

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Queue fn(*args, **kwargs) (or, on the executor's own thread, run
        it now); return a concurrent.futures.Future."""
        if not self.is_own_thread():
            return self.submit_later(fn, *args, **kwargs)
        from concurrent.futures import Future
        future: Any = Future()
        self._run(future, fn, args, kwargs)
        return future

    def submit_later(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Queue fn(*args, **kwargs) for run_pending(), even from the
        executor's own thread; return a concurrent.futures.Future."""
        from concurrent.futures import Future
        future: Any = Future()
        self._queue.append((future, fn, args, kwargs))
        try:
            self._bell.release()
        except RuntimeError:
            pass  # rung already
        if self.wake is not None:
            self.wake()
        return future

    def is_own_thread(self) -> bool:
        """True on the thread that runs the calls (see Process: a call
        from there to a primary of this process is made directly)."""
        return _thread.get_ident() == self._owner

    @property
    def idle(self) -> bool:
        """True while nothing has ever called run_pending()."""
        return not self._ran

    def run_pending(self, timeout: float | None = 0) -> int:
        """Run what was submitted so far, here; return how many ran.

        Args:
            timeout (float): with nothing to run, first wait up to this long
                for something (None: until something comes), as a script's
                loop does: ``while app.is_primary: ex.run_pending(None)``.
        """
        self._owner, self._ran = _thread.get_ident(), True
        if not self._queue and timeout != 0:
            self._bell.acquire(timeout=-1 if timeout is None else timeout)
        done = 0
        while self._queue:
            done += self._run(*self._queue.popleft())
        return done

    @staticmethod
    def _run(future: Any, fn: Callable, args: tuple, kwargs: dict) -> int:
        if not future.set_running_or_notify_cancel():
            return 0
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - the sender gets it, as in concurrent.futures
            future.set_exception(exc)
        return 1


class HostExecutor:
    """Run handlers on a host application's main thread (Maya, Nuke,
    Houdini) through its own functions: one that runs a call there and
    returns its result, blocking the caller until then, and one that only
    queues a call there. The handler's exception reaches the sender; a
    call made on the main thread runs at once. HostExecutor.maya(),
    .nuke() and .houdini() import nothing of the host before they are
    called.

    Args:
        call_with_result (callable): call_with_result(fn, *args, **kwargs)
            runs fn on the main thread and returns its result.
        call_later (callable): call_later(fn) queues fn for the main thread;
            default: call_with_result on a thread of its own.
    """

    def __init__(self, call_with_result: Callable[..., Any],
                 call_later: Callable[[Callable[[], Any]], Any] | None = None) -> None:
        self.call_with_result, self.call_later = call_with_result, call_later

    @classmethod
    def maya(cls) -> HostExecutor:
        """maya.utils.executeInMainThreadWithResult and executeDeferred."""
        utils = _host_module("maya.utils")
        return cls(utils.executeInMainThreadWithResult, utils.executeDeferred)

    @classmethod
    def nuke(cls) -> HostExecutor:
        """nuke.executeInMainThreadWithResult and executeInMainThread."""
        nuke = _host_module("nuke")
        return cls(lambda fn, *args, **kwargs: nuke.executeInMainThreadWithResult(
            fn, args=args, kwargs=kwargs), nuke.executeInMainThread)

    @classmethod
    def houdini(cls) -> HostExecutor:
        """hdefereval.executeInMainThreadWithResult and executeDeferred."""
        hdefereval = _host_module("hdefereval")
        return cls(hdefereval.executeInMainThreadWithResult, hdefereval.executeDeferred)

    def is_own_thread(self) -> bool:
        """True on the main thread, where these hosts run their UI."""
        import threading
        return threading.current_thread() is threading.main_thread()

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run fn(*args, **kwargs) on the main thread; return a done Future."""
        from concurrent.futures import Future
        future: Any = Future()
        try:
            if self.is_own_thread():
                future.set_result(fn(*args, **kwargs))
            else:
                future.set_result(self.call_with_result(fn, *args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - the sender gets it, as in concurrent.futures
            future.set_exception(exc)
        return future

    def submit_later(self, fn: Callable[[], Any]) -> None:
        """Queue fn for the main thread, without waiting for it."""
        if self.call_later is not None:
            self.call_later(fn)
        else:
            import threading
            threading.Thread(target=self.submit, args=(fn,), daemon=True).start()


class AsyncioExecutor:
    """Run submitted calls, and ``async def`` handlers, on an asyncio loop.

    Args:
        loop (asyncio.AbstractEventLoop): the application's running loop.
    """

    def __init__(self, loop: Any) -> None:
        self.loop = loop

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Schedule fn on the loop (awaiting it if it is a coroutine);
        return a concurrent.futures.Future."""
        import asyncio
        import inspect

        async def call() -> Any:
            result = fn(*args, **kwargs)
            return (await result) if inspect.isawaitable(result) else result
        return asyncio.run_coroutine_threadsafe(call(), self.loop)


# Desktop ---------------------------------------------------------------------
# "Open it again and the running window comes up": the primary raises its own
# window, with what the launch brought. Desktops refuse a raise they cannot
# trace to the user: Windows flashes the taskbar unless the launch allowed it
# (handoff() does), Wayland wants the launch's activation token (Qt reads it
# from XDG_ACTIVATION_TOKEN in requestActivate(), then clears it), and an X11
# WM that prevents focus stealing an activation request with the launch's time.
def bring_to_front(window: Any, event: dict | None = None) -> None:
    """Restore, raise and focus the primary's window for a later launch.

    Call it on the UI thread (handlers run there with a MainThreadExecutor),
    from the ``second-instance`` handler, with the event::

        @app.on('second-instance')
        def opened(event):
            open_documents(event)
            tcbon.bring_to_front(root, event)

    A minimised or withdrawn window is shown again; a maximised one stays
    maximised. The event's ``activation_token`` goes where the toolkit can
    use it: Qt on Wayland, GTK on Wayland and X11 (the startup id), Tk on
    X11 (the startup id's time stamp, in the activation request it makes),
    so that the desktop lets the window take the focus.

    Args:
        window: a Tk window (``tkinter.Tk`` or ``Toplevel``), a Qt one
            (a top-level ``QWidget`` or a ``QWindow``; PySide or PyQt) or
            a GTK one (``Gtk.Window``, PyGObject).
        event (dict): the second-instance event, or None.

    Raises:
        TypeError: window is not a Tk, Qt or GTK window.
        Error: a Qt or GTK window called from a thread other than its own
            (GTK's: the thread that runs its main loop).
    """
    token = (event or {}).get("activation_token")
    qt_package = next((klass.__module__.rpartition(".")[0]  # PySide6, PyQt5, ...
                       for klass in type(window).__mro__  # past the app's own subclasses
                       if klass.__module__.endswith((".QtWidgets", ".QtGui"))), None)
    if hasattr(window, "focus_force") and hasattr(window, "deiconify"):
        _raise_tk(window, token)
    elif hasattr(window, "set_startup_id") and hasattr(window, "present"):
        _raise_gtk(window, token)
    elif qt_package and hasattr(window, "raise_"):
        _raise_qt(window, token, qt_package)
    else:
        raise TypeError("bring_to_front() takes a Tk, Qt or GTK window, not %s"
                        % type(window).__name__)


def _off_its_thread(toolkit: str) -> Error:
    return Error("bring_to_front() was called off the window's thread: %s windows may only "
                 "be touched on it; pass executor=tcbon.MainThreadExecutor(...) to the "
                 "Process" % toolkit)


def _raise_tk(window: Any, token: str | None) -> None:
    if window.state() in ("iconic", "withdrawn"):  # not "zoomed": it stays so
        window.deiconify()
    window.lift()
    window.focus_force()  # on Windows too, now that the launch allowed it
    if window.tk.call("tk", "windowingsystem") == "x11":
        # A WM that prevents focus stealing (metacity, mutter) ignores lift()
        # from an app that is not active; it honours an activation request
        # with the time of the launch.
        window.update_idletasks()  # Tk's own requests first
        _x11_activate(window.winfo_screen(), window.winfo_id(), token, wrapped=True)


def _x11_activate(screen: str | None, window_id: int, token: str | None,
                  wrapped: bool = False) -> None:
    """Ask the window manager to activate a top-level window (an EWMH
    _NET_ACTIVE_WINDOW request, through libX11) with the time stamp of the
    launch's startup id, else 0: "now" to the WM. wrapped: window_id is
    the child of the window the WM manages (Tk's wrapper)."""
    import ctypes
    import re
    try:
        xlib = ctypes.CDLL("libX11.so.6")
    except OSError:
        return
    ulong, pointer = ctypes.c_ulong, ctypes.c_void_p
    xlib.XOpenDisplay.restype = pointer
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XInternAtom.restype = ulong
    xlib.XInternAtom.argtypes = [pointer, ctypes.c_char_p, ctypes.c_int]
    xlib.XQueryTree.argtypes = [pointer, ulong, ctypes.POINTER(ulong), ctypes.POINTER(ulong),
                                ctypes.POINTER(pointer), ctypes.POINTER(ctypes.c_uint)]
    xlib.XDefaultRootWindow.restype = ulong
    xlib.XDefaultRootWindow.argtypes = [pointer]
    xlib.XSendEvent.argtypes = [pointer, ulong, ctypes.c_int, ctypes.c_long, pointer]
    for name in ("XFree", "XFlush", "XCloseDisplay"):
        getattr(xlib, name).argtypes = [pointer]

    class ClientMessage(ctypes.Structure):  # XClientMessageEvent, in an XEvent's room
        _fields_ = [("type", ctypes.c_int), ("serial", ulong), ("send_event", ctypes.c_int),
                    ("display", pointer), ("window", ulong), ("message_type", ulong),
                    ("format", ctypes.c_int), ("data", ctypes.c_long * 5),
                    ("rest", ctypes.c_long * 12)]  # sizeof(XEvent): 24 longs

    display = xlib.XOpenDisplay(screen and screen.encode())  # None: $DISPLAY
    if not display:
        return
    try:
        if wrapped:
            root, parent, children, count = ulong(), ulong(), pointer(), ctypes.c_uint()
            if not xlib.XQueryTree(display, window_id, ctypes.byref(root),
                                   ctypes.byref(parent), ctypes.byref(children),
                                   ctypes.byref(count)):
                return
            if children:
                xlib.XFree(children)
            window_id = parent.value
        stamp = re.search(r"_TIME([0-9]+)$", token or "")
        event = ClientMessage(type=33, send_event=1, display=display, window=window_id,
                              message_type=xlib.XInternAtom(display, b"_NET_ACTIVE_WINDOW", 0),
                              format=32)
        event.data[0] = 1  # from an application
        event.data[1] = int(stamp.group(1)) & 0xFFFFFFFF if stamp else 0
        xlib.XSendEvent(display, xlib.XDefaultRootWindow(display), 0,
                        (1 << 19) | (1 << 20), ctypes.byref(event))  # SubstructureNotify|Redirect
        xlib.XFlush(display)
    finally:
        xlib.XCloseDisplay(display)


def _raise_gtk(window: Any, token: str | None) -> None:
    import importlib
    context = importlib.import_module("gi.repository.GLib").MainContext.default()
    if not context.acquire():  # another thread runs the main loop
        raise _off_its_thread("GTK")
    try:
        if token:  # X11: the window gets the launch's startup id, whose time
            window.set_startup_id(token)  # stamp lets the WM raise it; Wayland: the token
        window.present()  # deiconified, raised, focused
    finally:
        context.release()


def _raise_qt(window: Any, token: str | None, package: str) -> None:
    import importlib
    qt_core = importlib.import_module(package + ".QtCore")
    qt_gui = importlib.import_module(package + ".QtGui")
    if qt_core.QThread.currentThread() is not window.thread():
        raise _off_its_thread("Qt")
    minimised = getattr(qt_core.Qt, "WindowState", qt_core.Qt).WindowMinimized
    if hasattr(window, "activateWindow"):  # a QWidget
        window.setWindowState(window.windowState() & ~minimised)
        activate = window.activateWindow
    else:  # a QWindow
        window.setWindowStates(window.windowStates() & ~minimised)
        activate = window.requestActivate
    window.show()
    window.raise_()
    platform = qt_gui.QGuiApplication.platformName()
    if token and platform.startswith("wayland"):
        os.environ["XDG_ACTIVATION_TOKEN"] = token
        try:
            activate()
        finally:  # spent or unused: no child of ours may inherit it
            os.environ.pop("XDG_ACTIVATION_TOKEN", None)
        return
    activate()  # Windows: the launch has allowed it
    if platform == "xcb":
        # Qt's own request carries the time of its last X event; a WM that
        # prevents focus stealing wants the launch's (see _raise_tk).
        sync = getattr(qt_gui.QGuiApplication, "sync", None)  # not in older Qt
        if sync:
            sync()  # Qt's requests reach the X server before ours
        _x11_activate(None, int(window.winId()), token)


# Links and file types --------------------------------------------------------
# A link (myapp://...) or a double-clicked file starts the app with it in its
# argv, and main() hands that launch over like any other (issue 23). Written
# per user, without admin rights, where each desktop reads them: desktop
# files, a shared-mime-info package and mimeapps.list under the XDG
# directories; HKCU\Software\Classes on Windows. The command registered
# always ends with "--" before the link or path: nothing from a link may
# become an option (CVE-2018-1000006, where a link injected Chromium flags).
# Schemes that browsers, the system or other programs own: taking one over
# would hand every web page, file or script link to the app.
_TAKEN_SCHEMES = frozenset([
    "about", "blob", "chrome", "data", "file", "filesystem", "ftp", "ftps", "http", "https",
    "jar", "javascript", "mailto", "ms-settings", "resource", "sftp", "smb", "ssh", "tel",
    "urn", "vbscript", "view-source", "ws", "wss"])
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_SCHEME_CHARS = frozenset(_LOWER + "0123456789+-.")  # RFC 3986, section 3.1
_TYPE_CHARS = frozenset(_LOWER + "0123456789_+-.")
# Desktop Entry spec, "The Exec key": an argument holding one of these is quoted.
_EXEC_RESERVED = frozenset(" \t\n\"'\\><~|&;$*?#()`")


def _check_scheme(scheme: Any) -> str:
    """The scheme in lower case, as RFC 3986 compares them.

    Raises:
        ValueError: not a scheme that an app may take for its own.
    """
    if not isinstance(scheme, str) or not scheme:
        raise UsageError("a URL scheme is a name such as 'myapp', got %r" % (scheme,))
    low = scheme.lower()
    if low.endswith(":") or "/" in low:
        raise UsageError("give the scheme without ':' or '://': %r, not %r"
                         % (low.split(":")[0], scheme))
    if not (low[0] in _LOWER and set(low) <= _SCHEME_CHARS):
        raise UsageError("%r is not a URL scheme: it must start with a letter, followed by "
                         "letters, digits, '+', '-' or '.' (RFC 3986)" % scheme)
    if len(low) == 1:  # Windows reads C:\path as the scheme "c"
        raise UsageError("%r is one letter, which Windows takes for a drive: choose a scheme "
                         "of your own, such as 'myapp' or 'com.example.myapp'" % scheme)
    if low in _TAKEN_SCHEMES:
        raise UsageError("%r belongs to browsers and the system, not to one app: choose a "
                         "scheme of your own, such as 'myapp' or 'com.example.myapp'" % scheme)
    return low


def _check_type(extension: Any) -> str:
    """The file name extension in lower case (both desktops match them so).

    Raises:
        ValueError: not an extension such as '.shot'.
    """
    if not isinstance(extension, str):
        raise UsageError("a file type is an extension such as '.shot', got %r" % (extension,))
    low = extension.lower()
    if (len(low) < 2 or low[0] != "." or not set(low[1:]) <= _TYPE_CHARS
            or low.endswith(".") or ".." in low):
        raise UsageError("%r is not a file name extension: give one such as '.shot' (a dot, "
                         "then letters, digits, '_', '+', '-' or inner dots)" % extension)
    return low


def _launch_command() -> list[str]:
    """This launch's own command, to start the app again: a frozen app's
    executable, python -m MODULE, or python and the script's absolute path.
    sys.executable as it is: a venv's interpreter resolved through its
    symlink would be the base Python, without the venv's packages.

    Raises:
        ValueError: this launch has no command of its own to give.
    """
    if not sys.executable:
        raise UsageError("this interpreter does not know its executable (an embedding host): "
                         "pass command=[...] to tcbon.register()")
    if getattr(sys, "frozen", False):  # PyInstaller, cx_Freeze, py2exe
        return [sys.executable]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = getattr(spec, "name", None) or "__main__"
    if module != "__main__":  # python -m pkg runs pkg.__main__; python app.pyz has __main__
        suffix = ".__main__"
        return [sys.executable, "-m", module[:-len(suffix)] if module.endswith(suffix) else module]
    script = (_this_argv() or [""])[0]
    if script in ("", "-", "-c") or not os.path.exists(script):
        raise UsageError("this launch has no command of its own to register (python -c, "
                         "an interactive session): pass command=[...] to tcbon.register()")
    return [sys.executable, os.path.abspath(script)]


def _text_problem(value: str) -> str | None:
    """Why value cannot be written as it is into a desktop file, a MIME
    package (XML 1.0) or the registry, or None. Every registered string is
    checked so (issue 27, finding 9: a title with a newline made a MIME
    package that update-mime-database rejects, and the type silently failed)."""
    for c in value:
        if ord(c) < 32 or ord(c) == 127:
            return "holds a control character"
        if 0xD800 <= ord(c) <= 0xDFFF or c in "\ufffe\uffff":
            return "holds %r, which is not text (bytes that were not UTF-8?)" % c
    return None


def _check_command(command: Any) -> list[str]:
    """The command as a list of arguments (a string: split as a POSIX shell
    does; Windows takes its own string as it is, see _WindowsLinks).

    Raises:
        ValueError: empty, not strings, or with characters no desktop file holds.
    """
    if isinstance(command, str):
        import shlex
        command = shlex.split(command)
    if not command or not all(isinstance(arg, str) for arg in command):
        raise UsageError("command is the app's command line, e.g. ['/usr/bin/myapp'] or "
                         "[sys.executable, '/path/to/app.py'], got %r" % (command,))
    problem = next(filter(None, map(_text_problem, command)), None)
    if problem:
        raise UsageError("the command %s, which a desktop file or the registry cannot pass "
                         "on: %r" % (problem, command))
    if "=" in command[0]:  # Desktop Entry spec: the program's name or path has none
        raise UsageError("the program's path %r holds '=', which the Desktop Entry spec "
                         "forbids there: move it, or start it through a script" % command[0])
    return list(command)


def _exec_argument(arg: str) -> str:
    """One argument of an Exec key, quoted as the Desktop Entry spec says: in
    double quotes if it holds a reserved character, and inside them '"', '`',
    '$' and '\\' take a backslash; '%' doubled (not a field code). The
    general string escaping follows (_desktop_string)."""
    arg = arg.replace("%", "%%")
    if arg and not _EXEC_RESERVED.intersection(arg):
        return arg
    return '"%s"' % "".join("\\" + c if c in '"`$\\' else c for c in arg)


def _desktop_string(value: str) -> str:
    """The general escaping of a desktop file's string values, applied after
    the Exec quoting (so a literal backslash in a quoted argument is four)."""
    value = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    value = value.replace("\r", "\\r")
    return "\\s" + value[1:] if value.startswith(" ") else value


def _exec_line(command: list[str], field_code: str) -> str:
    """The Exec value: the command, '--', then the field code (%u or %f)."""
    return _desktop_string(" ".join(_exec_argument(arg) for arg in command)
                           + " -- " + field_code)


def _link_id(name: str) -> str:
    """What names the files and keys of NAME's registration: its name with
    only the characters desktop file ids, MIME types and ProgIDs all take,
    and a hash of the name when some had to go (two names, two ids)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in name)
    if safe != name:
        import hashlib
        safe += "_" + hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return safe


def _xdg_home(variable: str, default: str) -> str:
    """$XDG_DATA_HOME or $XDG_CONFIG_HOME if absolute (the Base Directory
    spec ignores a relative one), else its default under the home."""
    value = os.environ.get(variable, "")
    return value if os.path.isabs(value) else os.path.join(os.path.expanduser("~"), default)


def _write_text(path: str, text: str) -> None:
    """Write a file whole, as _edit_file writes: a desktop that reads it
    meanwhile, or a kill -9, meets the old content or the new, never half."""
    _edit_file(path, lambda old: text)


def _no_file(old: str | None) -> None:
    """_edit_file's edit that removes the file."""
    return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return f.read()
    except FileNotFoundError:
        return None


# The files tcbon writes outside its app dir, mimeapps.list above all, are
# shared with the user's editor, xdg-mime and other tcbon processes: each is
# changed as careful tools change theirs (issue 27, findings 2-4, 10, 11).
_EDITS = _thread.allocate_lock()  # this process' threads, one edit at a time
_EDIT_LOCK_WAIT = 30.0  # seconds another process may hold a file's lock


def _edit_file(path: str, edit: Callable[[str | None], str | None]) -> bool:
    """Change a file: edit gets its text (None: there is none) and returns
    the new text, or None to remove the file. True if the file changed.

    Under a lock that other threads and processes take too, so no edit is
    lost (finding 2). The new text goes to a temporary file of a random
    name made with O_EXCL and O_NOFOLLOW, never through a planted symlink
    (finding 3); synced, it replaces the file atomically, so that a reader
    or a kill -9 meets the old text or the new, never half or none
    (finding 10). Bytes that are not UTF-8 are kept as they were
    (surrogateescape both ways, finding 4), and so is the mode; a symbolic
    link (a dotfiles repository) is changed at its target and stays a link
    (finding 11); removing the file removes the link, not its target.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    with _EDITS:
        while True:
            if not os.path.isdir(folder):
                if edit(None) is None:
                    return False  # nothing to remove: no folder made for it
                os.makedirs(folder, exist_ok=True)
            try:
                lock = _hold_edit_lock(target)
                break
            except FileNotFoundError:  # an unregister removed the folder, empty, meanwhile
                continue
        try:
            _remove_killed_temps(target)
            old, mode = _read_for_edit(target)
            new = edit(old)
            if new == old:
                return False
            if new is None:
                os.remove(path)
            else:
                _replace_text(target, new, mode)
            return True
        finally:
            _release_edit_lock(target, lock)


def _edit_lock_path(target: str) -> str:
    folder, base = os.path.split(target)
    return os.path.join(folder, ".%s.tcbon-lock" % base)


def _hold_edit_lock(target: str) -> int:
    """Hold the lock of target's edits: its descriptor. The lock file
    (.NAME.tcbon-lock, beside it) is made and removed by whoever holds it:
    one taken is kept only if it is still the file at that path, so that
    removing it never lets two hold it at once (filelock#574).

    Raises:
        Error: its file system has no locks, or another process held it
            for _EDIT_LOCK_WAIT seconds.
    """
    path, wait = _edit_lock_path(target), _Wait(_EDIT_LOCK_WAIT)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _SAFE, 0o600)
        except OSError:
            if not os.path.islink(path):
                raise
            os.remove(path)  # a planted link: never ours (finding 3), and removing never follows
            continue
        try:
            if _platform.lock(fd):
                held, now = os.fstat(fd), os.lstat(path)
                if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                    return fd
        except FileNotFoundError:
            pass  # removed by its last holder meanwhile: make it anew
        except OSError as exc:
            os.close(fd)
            raise Error("cannot lock %s: %s: its file system does not support locks (NFS "
                        "mounted with nolock, SMB, some FUSE file systems)"
                        % (path, _reason(exc))) from exc
        os.close(fd)  # let go of a stale one's lock too
        if wait.over():
            raise Error("%s is being changed by another process, which has held %s for %.0f s: "
                        "try again once it is done" % (target, path, _EDIT_LOCK_WAIT))
        wait.pause()


def _release_edit_lock(target: str, fd: int) -> None:
    try:
        os.remove(_edit_lock_path(target))  # while held: nothing of ours is left behind
    except OSError:
        pass  # gone already: the next one makes it anew
    os.close(fd)


def _read_for_edit(target: str) -> tuple[str | None, int | None]:
    """target's text and mode, or (None, None) if it is not there.

    Raises:
        Error: it is not a regular file (a FIFO would block every reader).
    """
    import stat
    try:
        fd = os.open(target, os.O_RDONLY | _SAFE | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None, None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Error("cannot change %s: it is not a regular file; move it away" % target)
        return f.read().decode("utf-8", "surrogateescape"), stat.S_IMODE(st.st_mode)


def _temp_path(target: str) -> str:
    """A new temporary file's path for target: beside it, hidden, with a
    random part that no other process can foresee (finding 3)."""
    folder, base = os.path.split(target)
    return os.path.join(folder, ".%s.%s.tcbon-tmp" % (base, os.urandom(6).hex()))


def _remove_killed_temps(target: str) -> None:
    """Under target's edit lock, a temporary file of target's that is there
    is a killed writer's: it goes (a planted link goes, never its target)."""
    folder, base = os.path.split(target)
    for entry in os.listdir(folder):  # .BASE. + 12 hex digits + .tcbon-tmp (_temp_path)
        if (entry.startswith(".%s." % base) and entry.endswith(".tcbon-tmp")
                and len(entry) == len(base) + 24):
            _withdraw_file(os.path.join(folder, entry))


def _replace_text(target: str, text: str, mode: int | None) -> None:
    """Replace target with text through a new temporary file, synced; the
    file's mode kept (mode None: a new file, as the umask makes it). Under
    the edit lock."""
    for _attempt in range(100):
        tmp = _temp_path(target)
        try:  # O_EXCL: fails on anything there, a dangling symlink included
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _SAFE,
                         0o666 if mode is None else 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise Error("cannot make a temporary file beside %s: every name tried was taken"
                    % target)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(text.encode("utf-8", "surrogateescape"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.remove(tmp)  # nothing left behind, whatever failed
        except OSError:
            pass  # replaced already, or not ours to remove any more
        raise


def _desktop_entry(title: str, command: list[str], field_code: str,
                   mime_types: list[str]) -> str:
    """A desktop file that opens what field_code stands for with command;
    NoDisplay: a handler, not a second menu entry of the app."""
    return ("[Desktop Entry]\nType=Application\nName=%s\nExec=%s\nMimeType=%s\n"
            "NoDisplay=true\nTerminal=false\nX-Tcbon-Name=%s\n") % (
        _desktop_string(title), _exec_line(command, field_code),
        "".join(mime + ";" for mime in mime_types), _desktop_string(title))


def _mime_package(title: str, types: dict[str, str]) -> str:
    """A shared-mime-info package defining the MIME type of each extension."""
    from xml.sax.saxutils import escape, quoteattr
    entries = "".join(
        '  <mime-type type=%s>\n    <comment>%s</comment>\n    <glob pattern=%s/>\n'
        '  </mime-type>\n' % (quoteattr(mime), escape("%s file (%s)" % (title, ext)),
                             quoteattr("*" + ext))
        for ext, mime in sorted(types.items()))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<mime-info xmlns='
            '"http://www.freedesktop.org/standards/shared-mime-info">\n%s</mime-info>\n'
            % entries)


def _known_mime_type(extension: str, data_dirs: list[str]) -> str | None:
    """The MIME type the shared-mime-info databases already give *.EXT, if
    any: the app becomes its default handler instead of defining another."""
    for directory in data_dirs:
        text = _read_text(os.path.join(directory, "mime", "globs2")) or ""
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[2].lower() == "*" + extension:
                return fields[1]
    return None


def _with_defaults(text: str, defaults: dict[str, str]) -> str:
    """mimeapps.list's text with each MIME type's default desktop file first
    in [Default Applications] (the others stay after it, for unregister to
    bring back); every other line kept as it is."""
    lines = text.splitlines()
    header = "[Default Applications]"
    if header not in (line.strip() for line in lines):
        lines += ([""] if lines else []) + [header]
    start = [line.strip() for line in lines].index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")),
               len(lines))
    pending = dict(defaults)
    for i in range(start + 1, end):
        key, sep, value = lines[i].partition("=")
        if sep and key.strip() in pending:
            desktop = pending.pop(key.strip())
            rest = [v for v in value.strip().split(";") if v and v != desktop]
            lines[i] = "%s=%s;" % (key.strip(), ";".join([desktop] + rest))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # after the section's last entry, before its blank lines
    lines[end:end] = ["%s=%s;" % item for item in sorted(pending.items())]
    return "\n".join(lines) + "\n"


def _without_desktops(text: str, desktops: set[str]) -> str:
    """mimeapps.list's text without these desktop files: taken out of each
    list, a line dropped once its list is empty; the rest as it was."""
    kept = []
    for line in text.splitlines(True):
        key, sep, value = line.partition("=")
        listed = value.strip().split(";") if sep and not line.startswith("[") else []
        if desktops.intersection(listed):
            rest = [v for v in listed if v and v not in desktops]
            if not rest:
                continue
            line = "%s=%s;\n" % (key, ";".join(rest))
        kept.append(line)
    return "".join(kept)


# What update-mime-database makes from mime/packages: with no package left,
# an empty database, which unregister removes with the directories it made.
_MIME_DATABASE = ("aliases", "generic-icons", "globs", "globs2", "icons", "magic",
                  "mime.cache", "subclasses", "treemagic", "types", "version", "XMLnamespaces")


class _XdgLinks:
    """Linux and the BSDs: the Desktop Entry, Shared MIME-info and MIME
    Applications Associations specs, as xdg-mime follows them. Every file is
    named after the app (_link_id), so unregister finds all it wrote."""

    def __init__(self) -> None:
        self.data = _xdg_home("XDG_DATA_HOME", os.path.join(".local", "share"))
        self.config = _xdg_home("XDG_CONFIG_HOME", ".config")
        self.applications = os.path.join(self.data, "applications")
        self.mime = os.path.join(self.data, "mime")
        self.mimeapps = os.path.join(self.config, "mimeapps.list")

    def desktops(self, name: str) -> dict[str, str]:
        """The desktop file of each field code: %u for links, %f for files."""
        return {code: "tcbon-%s-%s.desktop" % (_link_id(name), kind)
                for code, kind in (("%u", "url"), ("%f", "file"))}

    def package(self, name: str) -> str:
        return os.path.join(self.mime, "packages", "tcbon-%s.xml" % _link_id(name))

    def register(self, name: str, schemes: list[str], types: list[str], command: Any,
                 title: str) -> list[str]:
        # Registering again replaces, and never leaves nothing registered (issue
        # 27, finding 10): the new files first, each replaced whole, then the
        # defaults, then what the new registration no longer needs.
        argv, written = _check_command(command), []  # type: list[str], list[str]
        handled = {"%u": ["x-scheme-handler/" + scheme for scheme in schemes],
                   "%f": self.mime_types(name, title, types, written)}
        defaults, ours = {}, self.desktops(name)
        for code, desktop in ours.items():
            if handled[code]:
                path = os.path.join(self.applications, desktop)
                _write_text(path, _desktop_entry(title, argv, code, handled[code]))
                written.append(path)
                defaults.update(dict.fromkeys(handled[code], desktop))
        _edit_file(self.mimeapps, lambda old: _with_defaults(
            _without_desktops(old or "", set(ours.values())), defaults))
        for code, desktop in ours.items():
            if not handled[code]:
                _edit_file(os.path.join(self.applications, desktop), _no_file)
        if self.package(name) not in written and _edit_file(self.package(name), _no_file):
            self.drop_mime_database()
            _remove_empty_dirs([os.path.join(self.mime, "packages"), self.mime])
        return written + [self.mimeapps]

    def mime_types(self, name: str, title: str, types: list[str], written: list[str]) -> list[str]:
        """The MIME type of each extension: the one the databases know, or
        a new one, defined in a package of this app's (appended to written)."""
        system = [d for d in os.environ.get("XDG_DATA_DIRS", "").split(os.pathsep)
                  if os.path.isabs(d)] or ["/usr/local/share", "/usr/share"]
        known = {ext: _known_mime_type(ext, [self.data] + system) for ext in types}
        ours = {ext: "application/x-%s-%s" % (_link_id(name).lower(), ext[1:]) for ext in types}
        new = {ext: ours[ext] for ext, mime in known.items()  # ours: known from the last time
               if mime in (None, ours[ext])}
        if new:
            _write_text(self.package(name), _mime_package(title, new))
            written.append(self.package(name))
            self.update_mime_database()
        return [known[ext] or new[ext] for ext in types]

    def update_mime_database(self) -> None:
        """Let file type lookups see the packages (xdg-mime and GLib read
        the database, not the packages); without the tool, desktops do it
        when they next run it."""
        import shutil
        import subprocess
        tool = shutil.which("update-mime-database")
        if tool:
            subprocess.run([tool, self.mime], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    def unregister(self, name: str) -> list[str]:
        removed, ours = [], self.desktops(name).values()

        def without_us(text: str | None) -> str | None:
            rest = None if text is None else _without_desktops(text, set(ours))
            if rest is None or rest == text or os.path.islink(self.mimeapps) or any(
                    line.strip() and not line.startswith("[") for line in rest.splitlines()):
                return rest  # a symlink's target stays, as the user's repository has it
            return None  # only section headers left: the file said nothing before us
        for desktop in ours:
            if _edit_file(os.path.join(self.applications, desktop), _no_file):
                removed.append(os.path.join(self.applications, desktop))
        if _edit_file(self.mimeapps, without_us):
            removed.append(self.mimeapps)
        if _edit_file(self.package(name), _no_file):
            removed.append(self.package(name))
            self.drop_mime_database()
        _remove_empty_dirs([os.path.join(self.mime, "packages"), self.mime, self.applications])
        return removed

    def drop_mime_database(self) -> None:
        """Rebuild the user's MIME database without this app's package; with
        no package left, remove it (an empty database defines nothing)."""
        self.update_mime_database()
        packages = os.path.join(self.mime, "packages")
        if os.path.isdir(packages) and os.listdir(packages):
            return
        for entry in _MIME_DATABASE:
            _withdraw_file(os.path.join(self.mime, entry))
        for entry in os.listdir(self.mime) if os.path.isdir(self.mime) else ():
            _remove_empty_dirs([os.path.join(self.mime, entry)])  # media types' folders


def _withdraw_file(path: str) -> bool:
    """Remove a file if it is there: True if it was."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def _remove_empty_dirs(paths: list[str]) -> None:
    for path in paths:
        try:
            os.rmdir(path)
        except OSError:
            pass  # not empty, or not there: not ours to judge


class _WindowsLinks:  # pragma: no cover - run by the rig (.ci/windows)
    r"""Windows: HKCU\Software\Classes, which the shell merges over the
    machine's classes: a key per URL scheme (with "URL Protocol"), a ProgID
    for the file types, and each extension's OpenWithProgids. The ProgID
    also records what was written (TcbonSchemes, TcbonTypes), as the
    registry cannot be searched by who wrote a key."""

    classes = r"Software\Classes"

    def register(self, name: str, schemes: list[str], types: list[str], command: Any,
                 title: str) -> list[str]:
        if not isinstance(command, str):  # a string: a Windows command line already
            import subprocess
            command = subprocess.list2cmdline(_check_command(command))
        elif not command.strip() or any(ord(c) < 32 for c in command):
            raise UsageError("command is the app's command line, e.g. "
                             "'\"C:\\Program Files\\MyApp\\myapp.exe\"', got %r" % command)
        line = command + ' -- "%1"'  # quoted: the shell passes a path with spaces whole
        # Registering again replaces, and never leaves nothing registered (issue
        # 27, finding 10): the ProgID records the last registration's schemes and
        # types with the new ones first (unregister finds all, whatever stops this
        # one), values are set over the old ones (the registry replaces a value
        # whole), and what the new one no longer needs goes last. No value is
        # read, changed and written back, nor shared with another app's: no lock.
        progid, written = self.progid(name), []  # type: str, list[str]
        key = "%s\\%s" % (self.classes, progid)
        last = {kind: self.get(key, kind) or [] for kind in ("TcbonSchemes", "TcbonTypes")}
        for kind, new in (("TcbonSchemes", schemes), ("TcbonTypes", types)):
            self.set(key, kind, list(dict.fromkeys(last[kind] + new)), "REG_MULTI_SZ")
        for scheme in schemes:
            key = "%s\\%s" % (self.classes, scheme)
            self.set(key, "", "URL:%s" % title)
            self.set(key, "URL Protocol", "")
            self.set(key + r"\shell\open\command", "", line)
            written.append("HKCU\\" + key)
        key = "%s\\%s" % (self.classes, progid)
        self.set(key, "", title)
        if types:
            self.set(key + r"\shell\open\command", "", line)
        for ext in types:
            self.set("%s\\%s\\OpenWithProgids" % (self.classes, ext), progid, None, "REG_NONE")
            if self.get("%s\\%s" % (self.classes, ext), "") is None:  # no default yet
                self.set("%s\\%s" % (self.classes, ext), "", progid)
            written.append("HKCU\\%s\\%s\\OpenWithProgids\\%s" % (self.classes, ext, progid))
        for scheme in set(last["TcbonSchemes"]) - set(schemes):
            self.delete_tree("%s\\%s" % (self.classes, scheme))
        for ext in set(last["TcbonTypes"]) - set(types):
            self.forget_type(ext, progid)
        if not types:
            self.delete_tree(key + r"\shell")
        self.set(key, "TcbonSchemes", schemes, "REG_MULTI_SZ")
        self.set(key, "TcbonTypes", types, "REG_MULTI_SZ")
        return written + ["HKCU\\" + key]

    def progid(self, name: str) -> str:
        return "tcbon.%s.1" % _link_id(name)  # Program.Component.Version, as Windows asks

    def unregister(self, name: str) -> list[str]:
        key = "%s\\%s" % (self.classes, self.progid(name))
        schemes, types = self.get(key, "TcbonSchemes"), self.get(key, "TcbonTypes")
        if schemes is None and types is None:
            return []
        removed = []
        for scheme in schemes or []:
            if self.delete_tree("%s\\%s" % (self.classes, scheme)):
                removed.append("HKCU\\%s\\%s" % (self.classes, scheme))
        for ext in types or []:
            removed += self.forget_type(ext, self.progid(name))
        self.delete_tree(key)
        return removed + ["HKCU\\" + key]

    def forget_type(self, ext: str, progid: str) -> list[str]:
        """Take the ProgID out of an extension's key; the keys that are
        left empty go (those the app made, then, or emptied)."""
        import winreg
        key = "%s\\%s" % (self.classes, ext)
        removed = []
        if self.delete_value(key + r"\OpenWithProgids", progid):
            removed.append("HKCU\\%s\\OpenWithProgids\\%s" % (key, progid))
        if self.get(key, "") == progid:
            self.delete_value(key, "")
        for path in (key + r"\OpenWithProgids", key):
            try:
                winreg.DeleteKey(winreg.HKEY_CURRENT_USER, path)  # type: ignore[attr-defined]
            except OSError:
                pass  # not empty: another program's values stay
        return removed

    def set(self, path: str, value_name: str, value: Any, kind: str = "REG_SZ") -> None:
        import winreg
        with winreg.CreateKey(winreg.HKEY_CURRENT_USER, path) as key:  # type: ignore
            winreg.SetValueEx(key, value_name, 0, getattr(winreg, kind), value)  # type: ignore

    def get(self, path: str, value_name: str) -> Any:
        """A value, or None if the key or the value is not there."""
        import winreg
        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, path) as key:  # type: ignore
                return winreg.QueryValueEx(key, value_name)[0]  # type: ignore[attr-defined]
        except FileNotFoundError:
            return None

    def delete_value(self, path: str, value_name: str) -> bool:
        import winreg
        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, path, 0,  # type: ignore
                                winreg.KEY_SET_VALUE) as key:  # type: ignore[attr-defined]
                winreg.DeleteValue(key, value_name)  # type: ignore[attr-defined]
        except FileNotFoundError:
            return False
        return True

    def delete_tree(self, path: str) -> bool:
        """Delete a key with its subkeys (DeleteKey takes leaves only)."""
        import winreg
        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, path) as key:  # type: ignore
                children = [winreg.EnumKey(key, i)  # type: ignore[attr-defined]
                            for i in range(winreg.QueryInfoKey(key)[0])]  # type: ignore
        except FileNotFoundError:
            return False
        for child in children:
            self.delete_tree(path + "\\" + child)
        winreg.DeleteKey(winreg.HKEY_CURRENT_USER, path)  # type: ignore[attr-defined]
        return True


def _links() -> Any:
    """This platform's registrar.

    Raises:
        Error: none that tcbon knows (macOS: the app bundle's Info.plist).
    """
    if _platform.links is None:
        raise Error("on this system links and file types are declared by the app bundle "
                    "(macOS: CFBundleURLTypes and CFBundleDocumentTypes in Info.plist), "
                    "not registered at run time: see docs/desktop.rst")
    return _platform.links()


# Each platform's registrar, plugged in here: the platform classes above
# know nothing of this optional part.
_WindowsPlatform.links = _WindowsLinks
if _UnixPlatform.desktop_files:
    _UnixPlatform.links = _XdgLinks


def _check_links(name: str, schemes: Any, types: Any, title: Any) -> tuple:
    """(schemes, types, title), checked.

    Raises:
        ValueError: a bad name, scheme or type, or nothing to register.
    """
    _check_name(name)
    if isinstance(schemes, str) or isinstance(types, str):
        raise UsageError("schemes and types are lists, e.g. schemes=['myapp'], types=['.shot']")
    schemes = list(dict.fromkeys(_check_scheme(scheme) for scheme in schemes))
    types = list(dict.fromkeys(_check_type(ext) for ext in types))
    if not schemes and not types:
        raise UsageError("nothing to register: give a URL scheme (schemes=['myapp']) or a "
                         "file type (types=['.shot']), or both")
    if title is not None and (not isinstance(title, str) or not title.strip()):
        raise UsageError("title is the app's name as people read it, got %r" % (title,))
    problem = title and _text_problem(title)
    if problem:
        raise UsageError("the title %s, which a desktop file or a MIME package cannot hold: "
                         "%r" % (problem, title))
    return schemes, types, title or name


def register(name: str, schemes: Iterable[str] = (), types: Iterable[str] = (),
             command: Any = None, title: str | None = None) -> list[str]:
    """Make links (``SCHEME:...``) and files of some types start the app,
    for this user, without admin rights; registering again replaces.

    The launch the desktop starts gets the link or path as its last
    argument, after ``--`` (so that no link becomes an option), and goes
    through ``Process.main()`` like any: the running primary's
    ``second-instance`` handler receives it, or it becomes the primary.
    Linux: desktop files, a shared-mime-info package for a new extension
    and the defaults in mimeapps.list; Windows: ``HKCU\\Software\\Classes``.
    See docs/desktop.rst.

    Args:
        name (str): the app's name, as given to Process.
        schemes: URL schemes, e.g. ``['myapp']`` for ``myapp://...`` links.
        types: file name extensions, e.g. ``['.shot']``.
        command: the app's command line, a list (a string is split as a
            POSIX shell does; on Windows, used as it is); default: this
            launch's own (see Process.register).
        title (str): the name people read (default: name).

    Returns:
        What was written: file paths, or registry keys (``HKCU\\...``).

    Raises:
        UsageError: a bad name, scheme, type, title or command (a control
            character in one), or nothing to register (also a ValueError).
        Error: registering is not done at run time here (macOS); a file
            to change could not be locked, or another process kept it
            locked for 30 s; a file or key could not be written (the
            OSError's reason said).
    """
    schemes, types, title = _check_links(name, schemes, types, title)
    command = _launch_command() if command is None else command
    try:
        return _links().register(name, schemes, types, command,  # type: ignore[no-any-return]
                                 title)
    except OSError as exc:
        raise _links_failed("register", name, exc) from exc


def _links_failed(action: str, name: str, exc: OSError) -> Error:
    """An OSError of register or unregister as a tcbon.Error, with its reason."""
    where = exc.filename if exc.filename is not None else "the registry"
    return Error("cannot %s %r: %s: %s; check that you may write there" % (
        action, name, where, _reason(exc)))


def unregister(name: str) -> list[str]:
    """Remove what register(name) wrote, and nothing else.

    Args:
        name (str): the app's name, as given to register.

    Returns:
        What was removed (empty if nothing was registered).

    Raises:
        UsageError: a bad name (also a ValueError).
        Error: registering is not done at run time here (macOS); a file
            to change could not be locked, or another process kept it
            locked for 30 s; a file or key could not be removed (the
            OSError's reason said).
    """
    try:
        return _links().unregister(_check_name(name))  # type: ignore[no-any-return]
    except OSError as exc:
        raise _links_failed("unregister", name, exc) from exc


# Command line ----------------------------------------------------------------

_CLI_HELP = """\
NAME ACTION --help shows an action's own options; an option goes before or after
the action. Several instances (Process(NAME, instances=...)): send, get, stop,
probe and wait go to the most recently active one, or: --to ID (that one), --where
KEY=VALUE (the most recently active whose metadata has it; repeatable), --all
(every one: one reply per instance, by id).

exit codes:
  0 done / running        1 not running            2 usage error or bad input
  3 refused by primary    4 timed out (busy/hung)  5 state directory unusable
  6 other failure         7 runs, but unreachable (another network namespace or machine)
  130 interrupted (Ctrl-C)

examples:
  python -m tcbon my_app && echo running
  python -m tcbon my_app send open '{"path": "/tmp/a.txt"}'
  python -m tcbon my_app get /count --json
  python -m tcbon my_app stop --timeout 30
  python -m tcbon my_app list --json
  python -m tcbon my_app send open '{"path": "a.txt"}' --start "my_app --hidden"
  python -m tcbon my_app send open '{"path": "a.txt"}' --where project=alpha
  python -m tcbon my_app register --scheme myapp --type .shot --command "/opt/my_app/run"
"""

# The actions, each an argparse sub-command with its own options (issue 29:
# one flat list of every option before): its arguments, what it does.
_CLI_ACTIONS = {
    "probe": ("", "say whether NAME runs: one line, exit 0 if it does, 1 if not (the "
                  "default action)"),
    "send": ("EVENT [JSON]", "send an event named EVENT (JSON: an object merged into it) "
                             "and print the reply"),
    "get": ("[ROUTE]", "GET a route of the primary (default /) and print the reply"),
    "stop": ("", "ask the primary to stop; return once it has"),
    "wait": ("", "block until a primary of NAME runs (default: no time limit); with "
                 "--exit, until none runs, without asking it to stop"),
    "list": ("", "the running instances of an app that allows several, with their "
                 "metadata: one line each (exit 1 if none runs)"),
    "register": ("", "make SCHEME:... links and *.EXT files start COMMAND (per user; the "
                     "link or path follows \"--\")"),
    "unregister": ("", "remove what register wrote for NAME"),
}
_CLI_TARGETS = ("probe", "send", "get", "stop", "wait")  # those that talk to one primary


def _cli_options() -> dict:
    """Every option: the actions it goes with, how it is used (for the
    message that says where it goes), add_argument's keywords."""
    targets, state = _CLI_TARGETS, _CLI_TARGETS + ("list",)
    several = "several instances: "
    return {
        "--app-dir": (state, "", dict(metavar="DIR", help="the Process' app_dir, if it is "
                                                          "not the default")),
        "--scope": (state, "", dict(help="the Process' scope: user (the default), session "
                                         "(this login session's primary), or an "
                                         "installation's absolute path")),
        "--timeout": (targets, "", dict(type=float, metavar="S", help=(
            "seconds to wait at most (default: %s; wait: no limit)" % DEFAULT_TIMEOUT))),
        "--json": (tuple(_CLI_ACTIONS), "", dict(action="store_true",
                                                 help="print JSON, for scripts")),
        "--to": (targets, "", dict(metavar="ID", help=several + "the one with this id")),
        "--where": (targets, "", dict(metavar="KEY=VALUE", action="append", help=(
            several + "the most recently active one whose metadata has KEY=VALUE "
            "(repeatable: all of them)"))),
        "--all": (targets, "", dict(action="store_true", help=(
            several + "every one (of those --where accepts)"))),
        "--exit": (("wait",), "wait --exit", dict(action="store_true", help=(
            "until no primary runs (it is not asked to stop)"))),
        "--kill-after": (("stop",), "stop --kill-after S", dict(
            type=float, metavar="S", help="if it has not stopped S seconds after being "
            "asked (hung), end the process that holds its lock, verified in the system's "
            "lock table (Linux)")),
        "--start": (("send", "get"), "send EVENT --start COMMAND", dict(
            metavar="COMMAND", help="if no primary runs, start the app with COMMAND "
                                    "(detached), wait for it to answer, then send")),
        "--command": (("register",), "register --command CMD --scheme SCHEME", dict(
            help="the app's command line (the link or path is added after --); required")),
        "--scheme": (("register",), "register --command CMD --scheme SCHEME", dict(
            action="append", help="a URL scheme (myapp for myapp://...); repeatable")),
        "--type": (("register",), "register --command CMD --type .EXT", dict(
            action="append", metavar="EXT",
            help="a file name extension (.shot); repeatable")),
        "--title": (("register",), "register --command CMD --title TITLE", dict(
            help="the app's name as people read it")),
    }



def _uptime(seconds: float) -> str:
    if seconds < 60:
        return "%.1fs" % seconds
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return "%dh%02dm" % (hours, minutes) if hours else "%dm%02ds" % (minutes, secs)


def _cli_name() -> str:
    """The command as it was invoked: the console script, or python -m."""
    program = os.path.basename((_this_argv() or [""])[0]).lower()
    return "tcbon" if program in ("tcbon", "tcbon.exe", "tcbon-script.py") else "python -m tcbon"


def _cli_parser(name: str = "NAME") -> tuple[Any, dict]:
    """The command line's parser, and one parser per action (a sub-command)."""
    import argparse
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=_cli_name(), description="Probe and talk to the primary instance of NAME.",
        usage="%(prog)s [-h] [--version] NAME [ACTION] [ARGUMENTS AND OPTIONS]",
        epilog=_CLI_HELP, formatter_class=raw)
    parser.add_argument("name", metavar="NAME",
                        help="the application name, as given to tcbon.Process")
    parser.add_argument("--version", action="version", version="tcbon " + __version__)
    subparsers = parser.add_subparsers(title="actions", metavar="ACTION", dest="action")
    actions, options = {}, _cli_options()
    for action, (_, summary) in _CLI_ACTIONS.items():
        sub = actions[action] = subparsers.add_parser(
            action, help=summary, description=summary, formatter_class=raw,
            prog="%s %s %s" % (parser.prog, name, action))
        if action == "send":
            sub.add_argument("event", metavar="EVENT", help="the event's name")
            sub.add_argument("payload", metavar="JSON", nargs="?",
                             help="a JSON object merged into the event")
        elif action == "get":
            sub.add_argument("route", metavar="ROUTE", nargs="?", help="default /")
        for option, (goes_with, _, keywords) in options.items():
            if action in goes_with:
                sub.add_argument(option, **keywords)
    return parser, actions


def _cli_option(word: str) -> str | None:
    """The option a command-line word names, as argparse reads it (a unique
    prefix will do), or None."""
    if word == "-h":
        return "--help"
    known = list(_cli_options()) + ["--help", "--version"]
    key = word.split("=", 1)[0]
    matches = [option for option in known if option.startswith(key)]
    return key if key in known else matches[0] if len(matches) == 1 else None


def _cli_split(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """NAME and the action (the first two words that are neither an option
    nor an option's value), the rest of argv, and the options given."""
    takes_value = [option for option, (_, _, keywords) in _cli_options().items()
                   if keywords.get("action") in (None, "append")]
    words: list[str] = []
    rest: list[str] = []
    given: list[str] = []
    index = 0
    while index < len(argv):
        word, index = argv[index], index + 1
        option = None
        if "--" not in rest and word.startswith("-") and word != "-":
            option = _cli_option(word) or word
        if option is None and len(words) < 2:
            words.append(word)
            continue
        rest.append(word)
        if option is not None:
            given.append(option)
        if option in takes_value and "=" not in word and index < len(argv):
            rest.append(argv[index])
            index += 1
    return words, rest, given


def _cli_parse(argv: list[str]) -> tuple[Any, Any]:
    """The action's parser and the options argv gives it. Raises SystemExit
    as parse_args() does, for --help, --version and usage errors."""
    import argparse
    words, rest, given = _cli_split(argv)
    parser, actions = _cli_parser(words[0] if words else "NAME")
    if "--version" in given or ("--help" in given and len(words) < 2):
        parser.parse_args(["--version" if "--version" in given else "--help"])
    if not words:  # argparse would say that ACTION is required too: it is not
        parser.error("NAME is required: %s NAME [ACTION ...]" % parser.prog)
    action = words[1] if len(words) > 1 else "probe"
    if action not in actions:
        _cli_unknown(parser, words[0], action)
    sub = actions[action]
    _cli_misplaced(sub, words[0], action, given)
    opts = argparse.Namespace(
        name=words[0], action=action, app_dir=None, scope="user", json=False, timeout=None,
        to=None, where=[], all=False, exit=False, start=None, command=None, scheme=[],
        type=[], title=None, event=None, payload=None, route=None)
    opts, extra = sub.parse_known_intermixed_args(rest, opts)
    if any(word.startswith("-") for word in extra):
        sub.error("unrecognized arguments: %s" % " ".join(extra))
    if extra:
        sub.error("%s takes %s, not %s" % (action, _CLI_ACTIONS[action][0] or "no arguments",
                                           " ".join(extra)))
    opts.args = [value for value in (opts.event, opts.payload, opts.route) if value is not None]
    for option in ("timeout", "kill_after"):
        value = getattr(opts, option, None)
        if value is not None and not 0 <= value < float("inf"):  # NaN too
            sub.error("--%s must be a number of seconds >= 0, got %s"
                      % (option.replace("_", "-"), value))
    if action == "register" and not opts.command:
        sub.error("register needs --command, the command line that starts your app, "
                  "e.g. %s %s register --command \"/opt/%s/run\" --scheme myapp"
                  % (parser.prog, opts.name, opts.name))
    return sub, opts


def _cli_unknown(parser: Any, name: str, action: str) -> None:
    """A usage error for an action that is none: the nearest, and all."""
    import difflib
    near = difflib.get_close_matches(action, list(_CLI_ACTIONS), 1)
    hint = " (did you mean %s?)" % near[0] if near else ""
    if name in _CLI_ACTIONS:
        hint = " (NAME comes first: %s %s %s)" % (parser.prog, action, name)
    parser.error("unknown action %r%s; the actions are: %s"
                 % (action, hint, ", ".join(_CLI_ACTIONS)))


def _cli_misplaced(parser: Any, name: str, action: str, given: list[str]) -> None:
    """A usage error for an option given to an action it does not go with."""
    options = _cli_options()
    for option in given:
        if option not in options or action in options[option][0]:
            continue
        goes_with, usage, _ = options[option]
        if action == "list" and "list" not in goes_with and option in ("--to", "--where",
                                                                       "--all"):
            parser.error("list shows every instance: filter its --json output instead")
        actions = goes_with[0] if len(goes_with) == 1 else "%s and %s" % (
            ", ".join(goes_with[:-1]), goes_with[-1])
        parser.error("%s goes with %s only%s" % (
            option, actions, ": %s %s %s" % (_cli_name(), name, usage) if usage
            else ", not with %s" % action))


def _cli_action(proc: Process, action: str, args: list[str], timeout: float | None,
                until_exit: bool = False, to: Any = None, where: dict | None = None,
                start: str | None = None, kill_after: float | None = None) -> Any:
    """Run one action; return what to print, or raise."""
    import json
    arity = {"probe": (0, 0), "send": (1, 2), "get": (0, 1), "stop": (0, 0), "wait": (0, 0),
             "list": (0, 0)}
    if action not in arity:
        raise UsageError("unknown action %r; use one of: %s" % (action, ", ".join(arity)))
    low, high = arity[action]
    if not low <= len(args) <= high:
        raise UsageError("%s takes %s argument(s), got %d" % (
            action, low if low == high else "%d to %d" % (low, high), len(args)))
    limit = DEFAULT_TIMEOUT if timeout is None and action != "wait" else timeout
    if timeout is None and kill_after is not None:  # time to ask, then to end it
        limit = kill_after + DEFAULT_TIMEOUT
    if action == "send":
        event = {}
        if len(args) == 2:
            try:
                event = json.loads(args[1])
            except ValueError as exc:
                raise UsageError("the JSON argument is not valid JSON: %s" % exc) from None
            if not isinstance(event, dict):
                raise UsageError("the JSON argument must be an object, e.g. '{\"x\": 1}'")
        return proc.send("event", dict(event, name=args[0]), timeout=limit, to=to, where=where,
                         start=start)
    if action == "get":
        return proc.get(args[0] if args else "/", timeout=limit, to=to, where=where,
                        start=start)
    if action == "list":
        return proc.instances()
    if action == "stop":
        ended = proc.stop(timeout=limit, to=to, where=where, kill_after=kill_after)
        return {"name": proc.name, "stopped": True, "ended": ended or []}
    if action == "wait" and until_exit:
        proc.wait_for_exit(timeout=limit)
        return {"name": proc.name, "running": False}
    if action == "wait":  # one deadline, through a long on_start too
        wait = _Wait(limit)

        def running() -> dict | None:
            try:
                return proc.info(timeout=wait.remaining(), to=to, where=where)
            except ProcessDoesNotExist:
                return None
        return wait.until(running, lambda: Timeout("no %r process started within %.1f s" % (
            proc.name, limit or 0.0), proc.name, limit or 0.0))
    return proc.info(timeout=limit, to=to, where=where)


def _cli_target(parser: Any, opts: Any) -> tuple[Any, dict | None, bool]:
    """to, where, and whether NAME runs several instances: asked for
    (--to, --where, --all, list), or else none runs as one but some as
    several (the command line does not know how the app was made)."""
    if opts.all and opts.to is not None:
        parser.error("--to and --all exclude each other: one instance, or every one")
    if (opts.all or opts.to is not None or opts.where) and opts.action in ("list",):
        parser.error("list shows every instance: filter its --json output instead")
    if opts.to is not None and _instance_id(opts.to) is None:
        parser.error("--to takes an instance id (a number that list shows), got %r" % opts.to)
    where = {}
    for item in opts.where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error("--where takes KEY=VALUE, got %r" % item)
        where[key] = value
    to = "all" if opts.all else opts.to
    # Every call looks at every slot (_Finder): the command line need not
    # know whether the app allows several instances (issue 26).
    return to, where or None, True


def _cli_entry(entry: dict) -> str:
    """One line of list: an instance, its metadata last."""
    now = time.time()
    meta = "".join(", %s=%s" % item for item in sorted((entry.get("meta") or {}).items()))
    version = "" if entry.get("app_version") is None else ", version %s" % entry["app_version"]
    return "%s %s: pid %s at %s on %s%s, up %s, active %s ago%s" % (
        entry.get("name"), entry.get("id"), entry.get("pid"), entry.get("address"),
        entry.get("host"), version, _uptime(max(0.0, now - (entry.get("started") or now))),
        _uptime(max(0.0, now - (entry.get("active") or now))), meta)


def main(argv: list[str] | None = None) -> int:
    """The command line: ``python -m tcbon NAME [ACTION ...]``.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code (see ``python -m tcbon --help``; 130, EXIT_INTERRUPTED,
        after Ctrl-C); never exits itself.
    """
    import io
    streams = sys.stdout, sys.stderr
    try:  # pythonw has none: argparse and print() must not fail for it
        sys.stdout, sys.stderr = sys.stdout or io.StringIO(), sys.stderr or io.StringIO()
        return _cli(argv)
    except KeyboardInterrupt:  # one line, not urllib's traceback (issue 29)
        _say(sys.stderr, "tcbon: interrupted (Ctrl-C)\n")
        return EXIT_INTERRUPTED
    finally:
        sys.stdout, sys.stderr = streams


def _cli(argv: list[str] | None) -> int:
    try:
        parser, opts = _cli_parse(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if opts.action in ("register", "unregister"):
        try:
            return _cli_links(opts)
        except (ValueError, Error, OSError) as exc:
            return _cli_fail(opts, _exit_code(exc), str(exc))
    try:
        to, where, several = _cli_target(parser, opts)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        proc = Process(opts.name, app_dir=opts.app_dir, scope=opts.scope,
                       instances=True if several else None)
        result = _cli_action(proc, opts.action, opts.args, opts.timeout, opts.exit, to, where,
                             opts.start, getattr(opts, "kill_after", None))
    except ProcessDoesNotExist as exc:
        if opts.start is not None:  # the command failed: say how
            return _cli_fail(opts, EXIT_NOT_RUNNING, str(exc))
        return _cli_absent(opts, proc.app_dir, to, where)
    except (ValueError, Error) as exc:
        return _cli_fail(opts, _exit_code(exc), str(exc))
    return _cli_show(opts, to, result)


def _cli_fail(opts: Any, code: int, message: str) -> int:
    """An error on stderr: a line, or JSON with --json; its exit code."""
    import json
    if opts.json:
        _say(sys.stderr, json.dumps({"error": message, "exit_code": code}) + "\n")
    else:
        _say(sys.stderr, "tcbon: %s\n" % message)
    return code


def _cli_absent(opts: Any, app_dir: str, to: Any, where: dict | None) -> int:
    """Nothing runs, or none of the instances asked for (in the words of
    the command line: --to, --where)."""
    import json
    if opts.json:
        print(json.dumps({"name": opts.name, "running": False}))
    elif to not in (None, "all"):
        print("%s has no instance %s running (list shows those that do)" % (opts.name, to))
    elif where:
        print("%s has no instance running whose metadata has %s" % (opts.name, " and ".join(
            "%s=%s" % item for item in sorted(where.items()))))
    else:
        print("%s is not running%s" % (opts.name, "" if opts.app_dir is None
                                        else " in %s" % app_dir))
    return EXIT_NOT_RUNNING


def _cli_show(opts: Any, to: Any, result: Any) -> int:
    """Print what an action returned; its exit code."""
    import json
    if opts.action == "list":
        return _cli_list(opts.name, result, opts.json)
    if to == "all" and opts.action != "stop":
        return _cli_broadcast(result, opts.json)
    if opts.action == "wait" and opts.exit:
        result = result if opts.json else "%s is not running" % opts.name
    elif opts.action in ("probe", "wait"):
        started = result.get("started") or time.time()
        result = {"name": result.get("name"), "running": True, "pid": result.get("pid"),
                  "address": result.get("address"), "host": result.get("host"),
                  "version": result.get("version"), "app_version": result.get("app_version"),
                  "started": started, "uptime": round(max(0.0, time.time() - started), 3)}
        if not opts.json:
            result = "%s is running: pid %s at %s on %s,%s tcbon %s, up %s" % (
                result["name"], result["pid"], result["address"], result["host"],
                "" if result["app_version"] is None else " version %s," % result["app_version"],
                result["version"], _uptime(result["uptime"]))
    elif opts.action == "stop" and not opts.json:
        result = "%s stopped" % opts.name + ("" if not result["ended"] else (
            " (it did not stop within %s s when asked: ended pid %s, which held its lock)"
            % (opts.kill_after, ", ".join(map(str, result["ended"])))))
    if opts.json:
        print(json.dumps(result))
    elif isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return EXIT_OK


def _cli_links(opts: Any) -> int:
    """register or unregister: say what was written or removed."""
    import json
    if opts.action == "register":
        done = register(opts.name, opts.scheme, opts.type, opts.command, opts.title)
    else:
        done = unregister(opts.name)
    if opts.json:
        print(json.dumps({"name": opts.name, opts.action + "ed": done}))
    elif opts.action == "register":
        print("%s registered; wrote:\n  %s" % (opts.name, "\n  ".join(done)))
    elif done:
        print("%s unregistered; removed:\n  %s" % (opts.name, "\n  ".join(done)))
    else:
        print("%s was not registered: nothing to remove" % opts.name)
    return EXIT_OK


def _cli_list(name: str, entries: list[dict], as_json: bool) -> int:
    import json
    if as_json:
        print(json.dumps(entries))
    for entry in entries if not as_json else ():
        print(_cli_entry(entry))
    if not entries and not as_json:
        print("%s is not running" % name)
    return EXIT_OK if entries else EXIT_NOT_RUNNING


def _cli_broadcast(replies: dict, as_json: bool) -> int:
    """A broadcast's replies, by instance id; the exit code of the first
    that failed, else 0."""
    import json
    code, shown = EXIT_OK, {}
    for key, reply in replies.items():
        if isinstance(reply, Error):
            code = code or _exit_code(reply)
            reply = {"error": str(reply), "exit_code": _exit_code(reply)}
        shown[str(key)] = reply
    print(json.dumps(shown) if as_json else json.dumps(shown, indent=2, ensure_ascii=False))
    return code


if __name__ == "__main__":
    sys.exit(main())
