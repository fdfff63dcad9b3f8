"""One process per run folder: the lock file `run.lock`.

Two processes on one `--out` (two `--resume`, or an `--overwrite` while the
other trains) would delete each other's checkpoint folders. The run set-up
(`runs.check_run`, `runs.prepare_run`, `recipe.fit`) takes this lock first,
in the chief only, so a second process is refused at once, before it deletes
or trains anything:

- `run.lock` is created with `O_CREAT | O_EXCL` (atomic, also on NFS v3+)
  and holds the holder's pid, host, start time and command line (JSON).
- A lock of a dead process on this host (its pid is gone, or now belongs to a
  process started later) is stale: it is taken over, saying so. A lock from
  another host cannot be checked from here: it is refused, naming the host
  and the file to delete if that process is known to be dead.
- A process holds a folder once (taking it again is a no-op); the lock is
  released by `release` (or the context manager `held`), by
  `cli.exit_on_error` when a script stops on an error, and at exit by
  `atexit` for whatever is still held (a normal end, an error, Ctrl-C). A
  process killed with SIGKILL leaves a stale lock, taken over next time.
"""

import atexit
import contextlib
import json
import os
import socket
import sys
import time
import uuid

from keras_sepvit.training.errors import TrainingError

LOCK = "run.lock"
_HELD = {}  # real path of the run folder -> RunLock held by this process
_WRITE_GRACE_S = 2.0  # how long an empty lock file is read as "being written"


class RunLockedError(TrainingError):
    """Another live process holds the run folder's lock (or its lock cannot be checked)."""


def _process_start(pid):
    """The start time of `pid` in clock ticks since boot (Linux), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces: split after its ")"
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _alive(pid, start=None):
    """Whether process `pid` of this host runs (and is the one started at `start`)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    now = _process_start(pid)
    return start is None or now is None or now == start


def _describe(holder):
    when = holder.get("started", "an unknown time")
    command = holder.get("command")
    return f"process {holder.get('pid')} (started {when}" + (f", `{command}`)" if command else ")")


class RunLock:
    """The lock of one run folder, held by this process once `acquire` returned.

    Args:
        directory: str. The run folder (created when missing; removed again,
            with the parents created for it, when the lock was all it held).
    """

    def __init__(self, directory):
        self.directory = directory
        self.path = os.path.join(directory, LOCK)
        self.token = uuid.uuid4().hex
        self.created = []  # the folders `acquire` created, deepest first
        self.pid = None
        # What the run set-up checked (`runs.check_run`): the settings to store, and the
        # changes to log, once the run starts (`runs.prepare_run`).
        self.pending_settings = None

    def _record(self):
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "process_start": _process_start(os.getpid()),
            "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]),
            "token": self.token,
        }

    def _create(self):
        """Creates the lock file atomically; False when one exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        self.pid = os.getpid()
        return True

    def _read(self):
        """(text, record) of the lock file; record None while it is being written.
        (None, None) when there is no lock file."""
        deadline = time.monotonic() + _WRITE_GRACE_S
        while True:
            try:
                with open(self.path) as f:
                    text = f.read()
            except FileNotFoundError:
                return None, None
            try:
                record = json.loads(text)
                if isinstance(record, dict) and isinstance(record.get("pid"), int):
                    return text, record
            except ValueError:
                pass
            if time.monotonic() > deadline:
                return text, None
            time.sleep(0.05)

    def _stale(self, record):
        """Why `record` is stale (a sentence), or None when its holder may be alive."""
        if record.get("host") != socket.gethostname():
            return None
        pid = record["pid"]
        if pid == os.getpid():
            if os.path.realpath(self.directory) in _HELD:
                return None
            return f"it was left by this process ({pid}) and is not held any more"
        if not _alive(pid, record.get("process_start")):
            return f"{_describe(record)} is no longer running"
        return None

    def _refusal(self, record):
        if record is None:
            return RunLockedError(
                f"{self.directory} has a lock file that cannot be read: {self.path}. Another "
                "process may be starting a run there. If no process uses this run folder, "
                f"delete {self.path} and try again."
            )
        host = record.get("host")
        if host != socket.gethostname():
            return RunLockedError(
                f"{self.directory} is in use by {_describe(record)} on host {host!r} (lock file "
                f"{self.path}); it cannot be checked from {socket.gethostname()!r}. Wait for it "
                f"to finish, or, if that process is no longer running, delete {self.path} and "
                "try again."
            )
        return RunLockedError(
            f"{self.directory} is in use: another process holds it, {_describe(record)} on "
            f"this host (lock file {self.path}). Two processes on one run folder would destroy "
            "each other's checkpoints: wait for it to finish or stop it, or choose another --out."
        )

    def _take_over(self, text):
        """Removes the stale lock file whose content is `text`; a lock another process
        created meanwhile is put back. True when the stale one is gone."""
        aside = f"{self.path}.{os.getpid()}.{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # another process took it over first
        with open(aside) as f:
            moved = f.read()
        if moved != text:  # a fresh lock of another process: put it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            os.remove(aside)
            return False
        os.remove(aside)
        return True

    def acquire(self):
        """Takes the lock, or raises `RunLockedError` saying who holds it."""
        folder = os.path.abspath(self.directory)
        while not os.path.isdir(folder):
            self.created.append(folder)
            folder = os.path.dirname(folder)
        os.makedirs(self.directory, exist_ok=True)
        for _ in range(5):
            if self._create():
                return self
            text, record = self._read()
            if text is None:
                continue  # released meanwhile
            why = None if record is None else self._stale(record)
            if why is None:
                self._discard_directory()
                raise self._refusal(record)
            if self._take_over(text):
                print(f"Note: took over the stale lock {self.path}: {why}.", flush=True)
        self._discard_directory()
        raise RunLockedError(
            f"could not take the lock {self.path}: other processes keep taking it. Make sure "
            "only one process trains into this run folder."
        )

    def release(self):
        """Removes the lock file if it is still this lock (idempotent)."""
        if self.pid != os.getpid():
            return  # not taken, or a forked child's copy
        self.pid = None
        try:
            with open(self.path) as f:
                mine = json.loads(f.read()).get("token") == self.token
        except (OSError, ValueError, AttributeError):
            mine = False
        if mine:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self._discard_directory()

    def _discard_directory(self):
        """Removes the folders this lock created again, those that stayed empty."""
        for folder in self.created:
            try:
                os.rmdir(folder)
            except OSError:
                break
        self.created = []


def holds(directory):
    """Whether this process holds the lock of `directory`."""
    return os.path.realpath(directory) in _HELD


def held_lock(directory):
    """The `RunLock` of `directory` this process holds, or None."""
    return _HELD.get(os.path.realpath(directory))


def hold(directory):
    """Takes the lock of `directory` for this process unless it holds it already.

    Returns True when it was taken now (the caller releases it), False when
    it was held before. Raises `RunLockedError` when another process holds it.
    """
    key = os.path.realpath(directory)
    if key in _HELD:
        return False
    _HELD[key] = RunLock(directory).acquire()
    return True


def release(directory):
    """Releases the lock of `directory` held by this process (no-op when none is)."""
    lock = _HELD.pop(os.path.realpath(directory), None)
    if lock is not None:
        lock.release()


@contextlib.contextmanager
def held(directory, take=True):
    """Holds the lock of `directory` in the block; released at its end (also on an
    error or Ctrl-C) when the block took it. `take=False` (a worker that is not
    the chief) holds nothing."""
    taken = take and hold(directory)
    try:
        yield
    finally:
        if taken:
            release(directory)


@atexit.register
def release_all():
    """Releases every lock this process still holds (run at exit)."""
    for key in list(_HELD):
        lock = _HELD.pop(key)
        lock.release()
