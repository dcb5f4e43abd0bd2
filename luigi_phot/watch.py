"""``luigi-phot-watch``: reduce the datasets of a tree as their frames arrive, all night.

    luigi-phot-watch --config reduction_manager_config.yaml [--local-scheduler]

The watcher reads the reduction manager's configuration (its keys unchanged)
and watches ``data_reduction_dir`` for frames and ``reduction_config.yaml``
files that appear, change or go, with inotify (the ``watchdog`` library) or, on
file systems whose changes inotify cannot see (NFS, CIFS, FUSE: found from
``/proc/mounts``, or asked for with ``--poll``), by polling.

Every ``--interval`` seconds it runs a *cycle* over the datasets whose frames
changed since the last one (at start: the datasets the configuration's
``dataset_selection`` selects, to catch up with what arrived while it was
not running):

- a dataset with a frame still being written waits (``arrival.ArrivalCheck``:
  settled for ``--settle`` seconds and its FITS end present);
- a locked one is skipped and looked at again next cycle;
- one already reduced from its current frames is up to date;
- the others are reduced by the manager's own engine
  (:func:`luigi_phot.tasks.batch.reduce_datasets`: ``ReduceDataset`` with its
  lock, ``max_parallel`` at once through the ``luigi_phot_dataset`` resource).

A dataset that fails is left until its frames or configuration change again; one
whose reduction the scheduler lost (luigid restarted or unreachable) is tried
again next cycle. Each cycle that looked at a dataset writes one line to
``log_dir/arcon_pipeline.log``, unless all it found were the frames still
waiting, or the datasets still locked, that the cycle before reported.

**Stopping.** SIGTERM or SIGINT: no new dataset or stage is started; the stage in
progress may finish for :data:`STOP_GRACE_S` seconds, then it is abandoned
(it fails, its dataset's lock is released, nothing half-written is kept: every
product is written atomically); a reduction process still alive at
:data:`STOP_KILL_S` is killed and its lock released by the watcher. Exit 0.
Signals reach the dataset processes too (they are forked from the watcher and
keep its handlers): a whole-group signal (systemd, Ctrl-C) stops them the same way.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import luigi
import luigi.configuration

from . import dataset_lock
from .arrival import ArrivalCheck, Waiting
from .config import REDUCTION_CONFIG_NAME, ConfigError, ManagerConfig, load_manager_config
from .console import console_logger
from .photometry.frames import is_frame_name
from .run_log import ManagerLog, Outcome
from .selection import Dataset, discover_datasets, lock_skip_reason, select_datasets

__all__ = ["DEFAULT_INTERVAL_S", "DEFAULT_SETTLE_S", "STOP_GRACE_S", "STOP_KILL_S", "WATCH_RUNS_DIR",
           "WatchStopping", "DatasetChanges", "CycleReport", "Watcher", "after_cycle_hooks", "NightOverview", "filesystem_type",
           "start_observer", "main"]

#: Seconds between two looks at what changed (``--interval``).
DEFAULT_INTERVAL_S = 5.0
#: Seconds a frame must be left unchanged before it is measured (``--settle``).
DEFAULT_SETTLE_S = 2.0
#: After a stop signal: seconds the stages in progress may take to finish before they are abandoned.
STOP_GRACE_S = 15.0
#: After a stop signal: seconds after which reduction processes still alive are killed.
STOP_KILL_S = 25.0
#: log_dir/watch_runs/<watcher run id>/<cycle>/: the outcome records of a cycle's reductions.
WATCH_RUNS_DIR = "watch_runs"
#: File systems whose changes made on other machines inotify does not report: polled.
POLLED_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "lustre", "gpfs", "beegfs",
                      "fuse.sshfs", "fuse.glusterfs", "ceph", "fuse.ceph", "fuse.s3fs", "fuse.rclone"}
#: Words of an outcome whose reduction the scheduler lost (not the dataset's fault): tried again next cycle.
_SCHEDULER_LOST = "scheduler restarted or unreachable"


class WatchStopping(BaseException):
    """Raised in a stage that is abandoned because the watcher stops. A BaseException:
    no ``except Exception`` of the science (which rejects a frame that crashes its
    measurement) may take it for a fault of the frame."""


# --------------------------------------------------------------------------
# Which datasets changed
# --------------------------------------------------------------------------


class DatasetChanges:
    """Collects, from file-system events (any thread), the names
    (``target/instrument/filter``) of the datasets whose frames or configuration
    changed; ``take()`` hands them over. Events inside a dataset's subdirectories
    (the pipeline's own products) and hidden files (a copy's temporary name) are
    not changes."""

    def __init__(self, root: Path, instruments: tuple[str, ...]):
        self.root = Path(root)
        self.instruments = set(instruments)
        self._names: set[str] = set()
        self._everything = False
        self._lock = threading.Lock()

    def add_path(self, path: str | bytes, is_directory: bool = False) -> None:
        try:
            parts = Path(os.fsdecode(path)).relative_to(self.root).parts
        except ValueError:
            return
        if any(p.startswith(".") for p in parts):
            return
        if len(parts) >= 2 and parts[1] not in self.instruments:
            return
        if len(parts) == 4 and not is_directory and (is_frame_name(parts[3]) or parts[3] == REDUCTION_CONFIG_NAME):
            self._mark("/".join(parts[:3]))
        elif len(parts) == 3 and is_directory:
            self._mark("/".join(parts))          # a dataset directory came (moved in whole) or went
        elif len(parts) < 3 and is_directory:
            with self._lock:
                self._everything = True          # a target or instrument directory moved in whole

    def mark(self, names) -> None:
        for name in names:
            self._mark(name)

    def _mark(self, name: str) -> None:
        with self._lock:
            self._names.add(name)

    def take(self) -> tuple[set[str], bool]:
        """(dataset names changed since the last take, whether the whole tree must be looked at)."""
        with self._lock:
            names, everything = self._names, self._everything
            self._names, self._everything = set(), False
        return names, everything


def _event_handler(changes: DatasetChanges):
    from watchdog.events import FileSystemEventHandler

    class _Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.event_type in ("opened", "closed_no_write") or \
                    (event.is_directory and event.event_type not in ("created", "deleted", "moved")):
                return   # reads, and a directory's own "modified" (an entry of it changed: seen as such)
            changes.add_path(event.src_path, event.is_directory)
            if getattr(event, "dest_path", ""):
                changes.add_path(event.dest_path, event.is_directory)

    return _Handler()


def filesystem_type(path: Path) -> str:
    """The type (``ext4``, ``nfs4``, ...) of the mount that holds `path`, from
    /proc/mounts; '' when unknown."""
    best, kind = "", ""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ")
                if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, kind = mount, fields[2]
    except OSError:
        return ""
    return kind


def start_observer(root: Path, changes: DatasetChanges, poll: bool, interval_s: float, note) -> object:
    """A started watchdog observer of `root` reporting to `changes`: inotify, or
    polling when asked, when the file system is a network one, or when inotify
    cannot be set up (its limits reached)."""
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    kind = filesystem_type(root)
    reason = "--poll" if poll else (f"{kind} file system" if kind in POLLED_FILESYSTEMS else "")
    handler = _event_handler(changes)
    if not reason:
        observer = Observer()
        try:
            observer.schedule(handler, str(root), recursive=True)
            observer.start()
            note(f"watching {root} with inotify ({kind or 'file system type unknown'})")
            return observer
        except OSError as exc:
            reason = f"inotify unavailable ({exc.strerror or exc})"
    observer = PollingObserver(timeout=max(1.0, interval_s))
    observer.schedule(handler, str(root), recursive=True)
    observer.start()
    note(f"watching {root} by polling every {max(1.0, interval_s):g} s ({reason})")
    return observer


# --------------------------------------------------------------------------
# Cycles
# --------------------------------------------------------------------------


@dataclass
class CycleReport:
    """What one cycle did with the datasets it looked at."""

    number: int
    outcomes: list[Outcome] = field(default_factory=list)
    waiting: dict[str, list[Waiting]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        """One line: counts, then every dataset that was not simply up to date."""
        def of(status: str) -> list[Outcome]:
            return [o for o in self.outcomes if o.status == status]

        parts = []
        reduced = of("reduced")
        parts.append(f"{len(reduced)} reduced" + (" (" + ", ".join(
            f"{o.dataset.name}{_took(o)}" for o in reduced) + ")" if reduced else ""))
        parts.append(f"{len(of('up_to_date'))} up to date")
        for status, word in (("skipped", "skipped"), ("failed", "failed")):
            chosen = of(status)
            parts.append(f"{len(chosen)} {word}" + (" (" + "; ".join(
                f"{o.dataset.name}: {o.reason or status}" for o in chosen) + ")" if chosen else ""))
        parts.append(f"{len(self.waiting)} waiting" + (" (" + "; ".join(
            f"{name}: {w[0].frame} {w[0].reason}" + (f" and {len(w) - 1} more" if len(w) > 1 else "")
            for name, w in sorted(self.waiting.items())) + ")" if self.waiting else ""))
        text = f"cycle {self.number} ({self.seconds:.1f} s): " + ", ".join(parts)
        return text + ("; " + "; ".join(self.problems) if self.problems else "")


def _took(o: Outcome) -> str:
    if o.started_unix is None or o.finished_unix is None:
        return ""
    return f" in {o.finished_unix - o.started_unix:.1f} s"


def after_cycle_hooks(run_id: str) -> list[Callable[[ManagerConfig, CycleReport], None]]:
    """What runs after every cycle that looked at a dataset, with the configuration and
    the cycle's report: the night overview. A hook that raises is logged and never stops
    the watcher."""
    return [NightOverview(run_id)]


class NightOverview:
    """``log_dir/index.html`` after each cycle, as the ReductionManager writes it after each
    run, over every dataset this watcher has looked at (its latest outcome), from
    ``watch_runs/<watcher>/summary.json``."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.latest: dict[str, Outcome] = {}

    def __call__(self, cfg: ManagerConfig, report: CycleReport) -> None:
        import socket

        from .dataset import write_json_atomic
        from .report import write_night_overview
        from .run_log import OUTCOMES

        for outcome in report.outcomes:
            self.latest[outcome.dataset.name] = outcome
        ordered = [self.latest[name] for name in sorted(self.latest)]
        path = cfg.log_dir / WATCH_RUNS_DIR / self.run_id / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, inside=cfg.log_dir, data={
            "run_id": self.run_id, "config": str(cfg.path), "host": socket.gethostname(), "pid": os.getpid(),
            "group": "watch", "selection": f"luigi-phot-watch, after cycle {report.number}: the latest outcome "
                                           f"of every dataset it has looked at",
            "n_found": len(ordered), "problems": report.problems, "max_parallel": cfg.max_parallel,
            "counts": {s: sum(o.status == s for o in ordered) for s in OUTCOMES},
            "outcomes": [o.to_json() for o in ordered],
        })
        write_night_overview(cfg.log_dir, path)


class Watcher:
    """The watch loop (see the module docstring). ``run()`` returns when stopped."""

    def __init__(self, cfg: ManagerConfig, log: ManagerLog, *, interval_s: float = DEFAULT_INTERVAL_S,
                 settle_s: float = DEFAULT_SETTLE_S, poll: bool = False,
                 hooks: list[Callable[[ManagerConfig, CycleReport], None]] | None = None):
        self.cfg, self.log = cfg, log
        self.interval_s, self.poll = float(interval_s), poll
        self.arrivals = ArrivalCheck(settle_s=settle_s, stall_s=max(60.0, 10 * settle_s))
        self.changes = DatasetChanges(cfg.data_reduction_dir.resolve(), cfg.instrument_list)
        self.hooks = list(hooks or [])
        self.stop_requested = threading.Event()
        self.reducing: list[Dataset] = []      # the datasets of the cycle in progress
        self.cycles = 0
        self._last_waiting: set[tuple[str, str, str]] = set()   # (dataset, frame, why) waiting or locked
        self.main_pid = os.getpid()

    # ---------------------------------------------------------------- the loop
    def run(self) -> None:
        cfg = self.cfg
        observer = start_observer(cfg.data_reduction_dir.resolve(), self.changes, self.poll, self.interval_s,
                                  self.log.info)
        try:
            selection = select_datasets(cfg)
            for problem in selection.problems:
                self.log.warning(problem)
            self.log.info(f"catching up: {selection.description}: {len(selection.datasets)} of "
                          f"{selection.n_found} datasets")
            self.changes.mark(ds.name for ds in selection.datasets)
            while not self.stop_requested.is_set():
                started = time.monotonic()
                report = self.cycle()
                # a frame waiting to settle is looked at again after the settle time, not a whole interval
                interval_s = min(self.interval_s, self.arrivals.settle_s) if report and report.waiting \
                    else self.interval_s
                self.stop_requested.wait(max(0.0, interval_s - (time.monotonic() - started)))
        finally:
            observer.stop()
            observer.join(timeout=5)

    def cycle(self) -> CycleReport | None:
        """Look at the datasets that changed; reduce those ready. None when nothing changed."""
        names, everything = self.changes.take()
        if not names and not everything:
            return None
        t0 = time.perf_counter()
        self.cycles += 1
        report = CycleReport(self.cycles)
        found, problems = discover_datasets(self.cfg.data_reduction_dir, self.cfg.instrument_list)
        by_name = {ds.name: ds for ds in found}
        due = sorted(by_name) if everything else sorted(n for n in names if n in by_name)
        report.problems = [p for p in problems if any(p.startswith(n + ":") for n in names)]
        to_reduce, keep = [], set()
        for name in due:
            ds = by_name[name]
            waiting = self.arrivals.waiting(ds.red_dir)
            reason = lock_skip_reason(ds.red_dir)
            if waiting:
                report.waiting[name] = waiting
                keep.add(name)
            elif reason:
                report.outcomes.append(Outcome(ds, "skipped", reason))
                keep.add(name)
            elif _is_current(ds):
                report.outcomes.append(Outcome(ds, "up_to_date"))
            else:
                to_reduce.append(ds)
        if to_reduce and not self.stop_requested.is_set():
            report.outcomes.extend(self._reduce(to_reduce, keep))
        self.changes.mark(keep)
        report.seconds = time.perf_counter() - t0
        # a cycle that only finds the same frames still waiting for the same reason, or the same
        # datasets still locked, says nothing new: no line (a copy or another reduction that lasts
        # minutes would otherwise fill the log with one line every few seconds)
        pending = {(name, w.frame, w.reason.split(" (")[0]) for name, ws in report.waiting.items() for w in ws} | \
            {(o.dataset.name, "", "locked") for o in report.outcomes if o.status == "skipped"}
        repeated = not report.problems and pending == self._last_waiting and \
            all(o.status == "skipped" for o in report.outcomes)
        self._last_waiting = pending
        if (due or report.problems) and not repeated:
            self._run_hooks(report)          # first: the cycle's line says its overview is written
            self.log.info(report.line())
        return report

    def _reduce(self, datasets: list[Dataset], keep: set[str]) -> list[Outcome]:
        from .tasks.batch import reduce_datasets

        run_dir = self.cfg.log_dir / WATCH_RUNS_DIR / self.log.run_id / f"{self.cycles:05d}"
        self.reducing = datasets
        try:
            outcomes = reduce_datasets(datasets, self.cfg.max_parallel, run_dir)
        except Exception as exc:      # the scheduler unreachable (luigid down): try again next cycle
            keep.update(ds.name for ds in datasets)
            why = " ".join(str(exc).split())[:300] or type(exc).__name__
            return [Outcome(ds, "failed", f"not started ({type(exc).__name__}: {why}); tried again next cycle")
                    for ds in datasets]
        finally:
            self.reducing = []
            self.release_orphaned_locks(datasets)
        out = []
        for ds in datasets:
            outcome = outcomes[ds]
            if self.stop_requested.is_set() and outcome.status == "failed":
                outcome.reason = "abandoned: the watcher stopped before its stages ended (reduced at its next start)"
            elif outcome.status in ("skipped",) or _SCHEDULER_LOST in outcome.reason:
                keep.add(ds.name)
                if outcome.status == "failed":
                    outcome.reason += "; tried again next cycle"
            elif outcome.status == "failed":
                outcome.reason += "; tried again when its frames or configuration change"
            outcome.reason = outcome.reason.replace(f"{ds.red_dir}: ", "")   # the line names the dataset
            out.append(outcome)
        return out

    def _run_hooks(self, report: CycleReport) -> None:
        for hook in self.hooks:
            try:
                hook(self.cfg, report)
            except Exception as exc:
                self.log.warning(f"after cycle {report.number}: {getattr(hook, '__name__', hook)} failed: "
                                 f"{' '.join(str(exc).split())[:200]}")

    # ---------------------------------------------------------------- stopping
    def release_orphaned_locks(self, datasets: list[Dataset]) -> None:
        """Remove the locks of `datasets` held by a process of this host that is gone (a
        reduction process killed at stop): no lock outlives the watcher."""
        for ds in datasets:
            try:
                holder = dataset_lock.read_lock(ds.red_dir)
                if holder is not None and dataset_lock.holder_state(holder) == "dead":
                    if dataset_lock.release(ds.red_dir, holder.run_id):
                        self.log.warning(f"{ds.name}: lock of the killed run {holder.run_id} released")
            except OSError as exc:
                self.log.warning(f"{ds.name}: lock of a killed run could not be removed ({exc.strerror})")

    def request_stop(self, why: str) -> None:
        """First stop signal in the watcher: start no new work, let the stages in
        progress finish for STOP_GRACE_S seconds, then abandon them (see _stopping)."""
        if self.stop_requested.is_set():
            return
        self.stop_requested.set()
        self.log.info(f"stopping ({why}): "
                      + (f"finishing the stages in progress of {len(self.reducing)} datasets"
                         if self.reducing else "no reduction in progress"))
        threading.Thread(target=self._stopping, name="stopping", daemon=True).start()

    def _stopping(self) -> None:
        """Every half second until the watcher has exited: tell this process's Luigi
        worker and every dataset process to start nothing new (Luigi's SIGUSR1) - again
        and again, because a worker made after the signal (the cycle was starting) must
        hear it too; after STOP_GRACE_S, abandon the stage in progress of each dataset
        process (SIGUSR2, once each); after STOP_KILL_S, kill what is left."""
        started = time.monotonic()
        abandoned: set[int] = set()
        while True:
            _phase_out_this_worker()
            children = [c.pid for c in multiprocessing.active_children() if c.pid]
            late = time.monotonic() - started >= STOP_GRACE_S
            for pid in children:
                _signal(pid, signal.SIGUSR2 if late and pid not in abandoned else signal.SIGUSR1)
                if late:
                    abandoned.add(pid)
            if time.monotonic() - started >= STOP_KILL_S:
                self._kill()
                return
            time.sleep(0.5)

    def _kill(self) -> None:
        """Kill the processes the stop could not end, release their locks, and leave."""
        if not self.reducing and not multiprocessing.active_children():
            return
        for pid in _descendants(os.getpid()):
            _signal(pid, signal.SIGKILL)
        time.sleep(0.5)
        self.release_orphaned_locks(list(self.reducing))
        time.sleep(3.0)
        # the main thread is still not back (e.g. waiting for an unreachable luigid): leave now
        self.log.error(f"stopped by force {STOP_KILL_S + 3.5:g} s after the stop signal")
        os._exit(1)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: request_stop in the watcher; in a dataset process forked from
        it (which inherits the handlers), the first one stops its stages after the one in
        progress, a second one (or SIGUSR2) abandons that one too."""
        received = {"n": 0}

        def on_stop(signum, frame):
            if os.getpid() == self.main_pid:
                self.request_stop(signal.Signals(signum).name)
                return
            received["n"] += 1
            if received["n"] == 1:
                _phase_out_this_worker()
                return
            raise WatchStopping("abandoned: the watcher is stopping")

        def on_abandon(signum, frame):
            if os.getpid() != self.main_pid:
                _phase_out_this_worker()
                raise WatchStopping("abandoned: the watcher is stopping")

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGUSR2, on_abandon)


def _is_current(ds: Dataset) -> bool:
    from .tasks.reduce import dataset_is_current

    return dataset_is_current(ds.red_dir)


def _phase_out_this_worker() -> None:
    """Tell the Luigi worker of this process to start nothing new and return once its
    running tasks ended (what its own SIGUSR1 handler does)."""
    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler):
        handler(signal.SIGUSR1, None)


def _descendants(pid: int) -> list[int]:
    """The processes descended from `pid` (from /proc), children before grandchildren."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _signal(pid: int | None, signum: int) -> None:
    try:
        if pid:
            os.kill(pid, signum)
    except OSError:
        pass


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="luigi-phot-watch",
        description="Reduce the datasets of data_reduction_dir as their frames arrive, until SIGTERM or SIGINT.")
    parser.add_argument("--config", required=True,
                        help="reduction manager configuration (YAML; luigi_phot/examples/manager_config.yaml)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                        help=f"seconds between two looks at what changed (default {DEFAULT_INTERVAL_S:g})")
    parser.add_argument("--settle", type=float, default=DEFAULT_SETTLE_S, metavar="SECONDS",
                        help=f"a frame is measured once unchanged for this long and complete "
                             f"(default {DEFAULT_SETTLE_S:g})")
    parser.add_argument("--poll", action="store_true",
                        help="poll the tree instead of inotify (automatic on NFS, CIFS and FUSE file systems)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local-scheduler", action="store_true",
                       help="a scheduler in this process instead of luigid")
    where.add_argument("--scheduler-host", default=None, help="luigid's host (Luigi's default: localhost)")
    parser.add_argument("--scheduler-port", type=int, default=None, help="luigid's port (Luigi's default: 8082)")
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.settle < 0:
        parser.error("--interval must be > 0 and --settle >= 0 seconds")
    if args.local_scheduler and args.scheduler_port is not None:
        parser.error("--scheduler-port goes with luigid, not with --local-scheduler")
    return args


def _use_scheduler(args: argparse.Namespace) -> None:
    """Make the Luigi scheduler options of this process what the command line says
    (the reductions read them through luigi.interface.core(), as under `luigi`)."""
    config = luigi.configuration.get_config()
    if not config.has_section("core"):
        config.add_section("core")
    config.set("core", "local_scheduler", str(bool(args.local_scheduler)))
    if args.scheduler_host:
        config.set("core", "scheduler_host", args.scheduler_host)
    if args.scheduler_port is not None:
        config.set("core", "scheduler_port", str(args.scheduler_port))


def _setup_logging() -> None:
    from luigi.setup_logging import InterfaceLogging

    core = luigi.interface.core()
    InterfaceLogging.setup(type("opts", (), {"background": None, "logdir": None,
                                             "logging_conf_file": core.logging_conf_file,
                                             "log_level": core.log_level})())


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        cfg = load_manager_config(args.config)
    except ConfigError as exc:
        print(f"luigi-phot-watch: {exc}", file=sys.stderr)
        return 2
    _use_scheduler(args)
    _setup_logging()
    try:
        log = ManagerLog(cfg.log_dir, "watch-" + dataset_lock.new_run_id(), echo=console_logger())
    except OSError as exc:
        print(f"luigi-phot-watch: {cfg.log_dir}: cannot write the log there ({exc.strerror})", file=sys.stderr)
        return 2
    core = luigi.interface.core()
    where = "local scheduler" if core.local_scheduler else f"luigid at {core.scheduler_host}:{core.scheduler_port}"
    watcher = Watcher(cfg, log, interval_s=args.interval, settle_s=args.settle, poll=args.poll,
                      hooks=after_cycle_hooks(log.run_id))
    watcher.install_signal_handlers()
    log.info(f"========== watcher {log.run_id}: pid {os.getpid()}, configuration {cfg.path}, {where}, "
             f"max_parallel {cfg.max_parallel}, interval {args.interval:g} s, settle {args.settle:g} s ==========")
    try:
        watcher.run()
    except ConfigError as exc:
        log.error(f"stopped: {exc}")
        return 2
    finally:
        log.info(f"watcher {log.run_id} stopped after {watcher.cycles} cycles")
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
