"""The dataset lock: ``red_dir/dataset.lock`` exists while a reduction runs.

It is created atomically with the classic NFS-safe recipe (write a unique
temporary file, then ``link()`` it to the lock name: the link fails if the
lock exists, and the lock never appears half-written) and says who holds it:
host, pid, the process's start time, the user, the start time of the run and
its run id.

A lock whose process no longer exists on this host is stale and is taken
over with a warning. A lock from another host is never broken: the message
says how to break it by hand.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "LOCK_NAME",
    "LockHolder",
    "LockHeldError",
    "new_run_id",
    "read_lock",
    "read_lock_file",
    "holder_state",
    "held_message",
    "acquire",
    "release",
]

LOCK_NAME = "dataset.lock"
_TAKEOVER = "dataset.lock.takeover"


class LockHeldError(RuntimeError):
    """The dataset is locked by a live reduction (or one on another host)."""


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    pid_start: str | None      # boot id + process start ticks: detects a reused pid
    user: str
    started_utc: str
    run_id: str

    def describe(self) -> str:
        return (f"run {self.run_id} of {self.user} on host {self.host}, pid {self.pid}, "
                f"started {self.started_utc}")


def new_run_id() -> str:
    """A run id that sorts by time: 20261127T231500Z-1a2b3c."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def _host() -> str:
    return socket.gethostname()


def _process_start(pid: int) -> str | None:
    """Boot id and start time (clock ticks since boot) of a process, or None where /proc is absent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        ticks = stat.rsplit(")", 1)[1].split()[19]
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return f"{boot}:{ticks}"
    except (OSError, IndexError):
        return None


def current_user() -> str:
    """The login name of this process's user (its uid when it has none)."""
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def _parse(text: str) -> LockHolder | None:
    try:
        data = json.loads(text)
        return LockHolder(host=str(data["host"]), pid=int(data["pid"]), pid_start=data.get("pid_start"),
                          user=str(data.get("user", "?")), started_utc=str(data.get("started_utc", "?")),
                          run_id=str(data.get("run_id", "?")))
    except (ValueError, KeyError, TypeError):
        return None


def read_lock_file(path: Path) -> LockHolder | None:
    """The holder recorded in a lock file; None when absent. A file that cannot be
    parsed is reported as held by an unknown holder (never silently broken)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    return _parse(text) or LockHolder(host="unknown", pid=-1, pid_start=None, user="?",
                                      started_utc="?", run_id="unreadable lock file")


def read_lock(red_dir: Path) -> LockHolder | None:
    """The current holder of red_dir's lock, or None when the dataset is not locked."""
    return read_lock_file(Path(red_dir) / LOCK_NAME)


def holder_state(holder: LockHolder) -> str:
    """'alive', 'dead' (stale: safe to take over) or 'unknown' (another host, unreadable)."""
    if holder.host != _host() or holder.pid <= 0:
        return "unknown"
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass  # exists, owned by another user
    if holder.pid_start is not None:
        now = _process_start(holder.pid)
        if now is not None and now != holder.pid_start:
            return "dead"  # the pid was reused by another process
    return "alive"


def _link_new(path: Path, content: str) -> bool:
    """Create `path` with `content` atomically; False if it already exists."""
    tmp = path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            os.write(fd, content.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        # a full disk: leave no half-made lock file behind, and say which file failed
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if not exc.filename:
            exc.filename = str(path)
        raise
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        # NFS can report an error although the link was made: trust the link count
        try:
            return os.stat(tmp).st_nlink == 2
        except OSError:
            return False
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def held_message(red_dir: Path, holder: LockHolder, state: str) -> str:
    lock = Path(red_dir) / LOCK_NAME
    if state == "alive":
        return f"{red_dir} is being reduced by {holder.describe()} ({lock} exists); not starting a second reduction"
    return (f"{red_dir} is locked by {holder.describe()}, which cannot be checked from host {_host()}; "
            f"if that reduction is no longer running, break the lock by hand: rm '{lock}'")


def acquire(red_dir: Path, run_id: str, pid: int | None = None, warn=None) -> LockHolder:
    """Take the lock of `red_dir` for run `run_id` held by process `pid` (default: this one).

    Raises LockHeldError naming the holder when a live reduction (or one on another
    host) holds it. A stale lock (dead process on this host) is taken over and
    `warn(message)` is called.
    """
    red_dir = Path(red_dir)
    pid = os.getpid() if pid is None else pid
    me = LockHolder(host=_host(), pid=pid, pid_start=_process_start(pid), user=current_user(),
                    started_utc=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    run_id=run_id)
    content = json.dumps(asdict(me), indent=1) + "\n"
    lock = red_dir / LOCK_NAME
    for _attempt in range(3):
        if _link_new(lock, content):
            return me
        holder = read_lock(red_dir)
        if holder is None:
            continue  # released in between: try again
        if holder.run_id == run_id and holder.host == me.host:
            return holder  # already ours
        state = holder_state(holder)
        if state != "dead":
            raise LockHeldError(held_message(red_dir, holder, state))
        _take_over(red_dir, holder, content)
        if warn is not None:
            warn(f"{lock}: took over a stale lock of {holder.describe()} (that process no longer exists)")
        return me
    raise LockHeldError(f"{red_dir}: could not take the lock ({lock} keeps changing hands)")


def _take_over(red_dir: Path, stale: LockHolder, content: str) -> None:
    """Replace a stale lock. A second lock file serialises takeovers so that two processes
    that both saw the same stale lock cannot both win."""
    guard = red_dir / _TAKEOVER
    guard_content = json.dumps({"host": _host(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                                "user": current_user(), "run_id": "takeover"})
    if not _link_new(guard, guard_content):
        other = read_lock_file(guard)
        if other is not None and holder_state(other) == "dead":
            try:
                guard.unlink()
            except FileNotFoundError:
                pass
            if _link_new(guard, guard_content):
                return _take_over_guarded(red_dir, stale, content, guard)
        raise LockHeldError(f"{red_dir}: another process is taking over the stale lock of {stale.describe()}")
    _take_over_guarded(red_dir, stale, content, guard)


def _take_over_guarded(red_dir: Path, stale: LockHolder, content: str, guard: Path) -> None:
    lock = red_dir / LOCK_NAME
    try:
        current = read_lock(red_dir)
        if current is not None:
            if current.run_id != stale.run_id or current.pid != stale.pid:
                raise LockHeldError(held_message(red_dir, current, holder_state(current)))
            lock.unlink()
        if not _link_new(lock, content):
            holder = read_lock(red_dir)
            raise LockHeldError(held_message(red_dir, holder, holder_state(holder)) if holder
                                else f"{red_dir}: lost the race for the lock")
    finally:
        try:
            guard.unlink()
        except FileNotFoundError:
            pass


def release(red_dir: Path, run_id: str) -> bool:
    """Remove the lock if run `run_id` holds it. Returns True when it was removed."""
    holder = read_lock(red_dir)
    if holder is None or holder.run_id != run_id:
        return False
    try:
        (Path(red_dir) / LOCK_NAME).unlink()
        return True
    except FileNotFoundError:
        return False
