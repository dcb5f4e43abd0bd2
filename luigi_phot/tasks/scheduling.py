"""Running tasks beneath a running task, through the command's scheduler, shown there
as its dependencies. Everything luigi_phot asks of Luigi beyond tasks, parameters
and targets is here.

Two tasks supervise others (docs/manager.md, "How the work is scheduled"):

- ReduceDataset holds one unit of the scheduler resource ``luigi_phot_dataset``
  for its whole reduction and runs the dataset's stages (LockDataset ...
  ReleaseLock) beneath it;
- ReductionManager runs the selected datasets' ReduceDataset beneath it, at most
  max_parallel at once.

They run what they supervise with a worker of their own (:func:`run_beneath`)
rather than as dependencies, because with dependencies Luigi gives neither:

- a Luigi resource is held only while a task is RUNNING; a task that yields
  dynamic dependencies goes back to PENDING and gives its units back, so a
  dataset's unit would be free while its stages run, and any number of datasets
  could hold their lock at once (docs/manager.md has the measurement);
- Luigi runs nothing after a failed dependency, so nothing would release the
  lock of a dataset whose stage failed, say how the run ended, or write the
  manager's summary after one dataset failed.

Luigi API used: ``luigi.worker.Worker`` (``add``, ``run``),
``luigi.scheduler.Scheduler``, ``luigi.rpc.RemoteScheduler`` (``update_resource``,
``add_task``) and ``luigi.interface.core`` (the command's scheduler).

Two behaviours Luigi has no public API for are relied on here, and only here;
``tests/test_scheduling.py`` pins both:

1. Luigi forks a task's process while holding ``luigi.worker.fork_lock``, so in
   the child that lock is held by a thread that does not exist there, and a
   Worker made in the child (its keep-alive thread, its own forks) would wait
   for it forever. :func:`_release_inherited_fork_lock` gives the child a fresh
   lock. The lock exists so that no process is forked while another thread is
   inside a network call (a child would inherit the resolver's lock held):
   :class:`ProgressWatcher`, a thread that reports to the scheduler while the
   worker beneath forks, holds it around its calls, as Luigi's own keep-alive
   thread does.
2. luigid records the dependencies a worker sends with ``add_task`` for a task
   that another worker is running, without changing its status; it also takes
   the resources and the retry policy sent with them, so the supervisor's own
   are sent. :func:`_show_beneath` sends the supervisor's own task with what
   it runs as dependencies, so that the visualiser's dependency graph shows the
   manager with its datasets and each dataset with its stages and frames.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import uuid

import luigi
import luigi.interface
import luigi.rpc
import luigi.scheduler
import luigi.worker

from ..dataset_lock import current_user
from .base import StageError

__all__ = ["command_scheduler", "run_beneath", "ProgressWatcher"]


def command_scheduler(resource_limits: dict[str, int] | None = None):
    """(scheduler, description): the scheduler of the `luigi` command this process
    runs under - luigid, or a new local scheduler when the command said
    ``--local-scheduler`` - with `resource_limits` set on it (on luigid, for every
    run that uses it)."""
    core = luigi.interface.core()
    limits = dict(resource_limits or {})
    shown = ", ".join(f"{name} limit {limit}" for name, limit in limits.items())
    if core.local_scheduler:
        resources = luigi.configuration.get_config().getintdict("resources")
        resources.update(limits)
        scheduler = luigi.scheduler.Scheduler(prune_on_get_work=True, record_task_history=False, resources=resources)
        return scheduler, "scheduler: local (this process only)" + (f"; {shown}" if shown else "")
    url = core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port:d}/"
    scheduler = luigi.rpc.RemoteScheduler(url)
    for name, limit in limits.items():
        if not scheduler.update_resource(name, limit):
            raise StageError(f"{url}: luigid refused to set the {name} limit to {limit}")
    return scheduler, f"scheduler: luigid at {url}" + (f"; {shown} (shared by every run using it)" if shown else "")


def run_beneath(supervisor: luigi.Task | None, roots: list[luigi.Task], *, workers: int, keep_alive: bool = False,
                separate_processes: bool = False, resource_limits: dict[str, int] | None = None,
                note=None) -> bool:
    """Run `roots` and what they require with a worker of this process, through the
    command's scheduler (:func:`command_scheduler`), at most `workers` tasks at once.

    `keep_alive`: wait while tasks are pending for resources that other runs hold,
    instead of stopping (a task that failed must then not be retried: see
    ReduceDataset.retry_count). `separate_processes`: each task in a process of its
    own even with one worker. `note(text)` is told which scheduler is used. On
    luigid the roots are shown as dependencies of `supervisor` (the running task
    calling this). Returns True when every root could be scheduled and every task
    the worker ran succeeded; tasks never run (a restarted scheduler) do not count."""
    _release_inherited_fork_lock()
    scheduler, where = command_scheduler(resource_limits)
    if note is not None:
        note(where)
    worker_id = (f"Worker(luigi_phot {supervisor.task_family if supervisor else 'batch'}, "
                 f"host={socket.gethostname()}, username={current_user()}, pid={os.getpid()}, id={uuid.uuid4().hex[:8]})")
    # waiting for units: ask again within 1-2 s (Luigi's default jitter adds up to 5 s)
    with luigi.worker.Worker(scheduler=scheduler, worker_id=worker_id, worker_processes=workers,
                             keep_alive=keep_alive, force_multiprocessing=separate_processes,
                             wait_jitter=1.0) as worker:
        scheduled = [worker.add(task) for task in roots]
        if supervisor is not None and isinstance(scheduler, luigi.rpc.RemoteScheduler):
            _show_beneath(scheduler, worker_id, supervisor, roots)
        return all(scheduled) and worker.run()


class ProgressWatcher(threading.Thread):
    """While a supervising task waits for what it runs (``with ProgressWatcher(...)``),
    shows on it, every `interval_s` and once at the end, the (percent, message) that
    `progress()` reads from status records. Progress is a courtesy: a failure to read
    or to report it never disturbs the run."""

    def __init__(self, task, progress, interval_s: float = 2.0):
        super().__init__(daemon=True, name=f"progress of {getattr(task, 'task_family', 'a task')}")
        self.task, self.progress, self.interval_s = task, progress, interval_s
        self.stopped = threading.Event()

    def show(self) -> None:
        try:
            percent, message = self.progress()
            with luigi.worker.fork_lock:   # module docstring, point 1
                self.task.report_progress(percent)
                self.task.report_status(message)
        except Exception:
            pass

    def run(self):
        while not self.stopped.wait(self.interval_s):
            self.show()

    def __enter__(self) -> "ProgressWatcher":
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stopped.set()
        self.join()
        self.show()
        return False


def _release_inherited_fork_lock() -> None:
    """In a task process Luigi forked, give luigi.worker a fresh fork_lock (see the
    module docstring, point 1): the one inherited is held by the thread that forked."""
    if multiprocessing.parent_process() is not None and luigi.worker.fork_lock.locked():
        luigi.worker.fork_lock = threading.Lock()


def _show_beneath(scheduler, worker_id: str, supervisor: luigi.Task, roots: list[luigi.Task]) -> None:
    """Tell luigid that `supervisor` (running, on another worker) depends on `roots`
    (module docstring, point 2). Sent as PENDING and not runnable, with the
    supervisor's own resources and retry policy, so that its status, its resources,
    how a failure of it is retried and the workers that may run it stay as they are.
    The graph is a courtesy: a failure to send it is ignored."""
    retry_policy = {"retry_count": supervisor.retry_count, "disable_hard_timeout": supervisor.disable_hard_timeout,
                    "disable_window": supervisor.disable_window}
    try:
        scheduler.add_task(worker=worker_id, task_id=supervisor.task_id, status=luigi.scheduler.PENDING,
                           runnable=False, deps=[task.task_id for task in roots],
                           resources=supervisor.process_resources(), family=supervisor.task_family,
                           module=supervisor.task_module, params=supervisor.to_str_params(),
                           priority=supervisor.priority, accepts_messages=supervisor.accepts_messages,
                           retry_policy_dict=retry_policy)
    except Exception:
        pass
