"""Stopping a running task: the subprocesses a task starts (qemu-img) are registered with the task's control
while its thread runs, so `task_cancel` can kill them by the PIDs the agent started. The command's own
failure path then removes its partial output (images.copy removes its `.part` file)."""
import threading
from contextlib import contextmanager

_current = threading.local()


class Control:
    def __init__(self):
        self._lock = threading.Lock()
        self._procs = []
        self.reason: str | None = None
        self.ended = threading.Event()      # set once the task's outcome is stored

    def started(self, proc) -> None:
        with self._lock:
            self._procs.append(proc)
            cancelled = self.reason is not None
        if cancelled:                        # cancelled before its process existed
            proc.kill()

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            procs = list(self._procs)
        for proc in procs:
            proc.kill()                      # Popen.kill: a no-op once the process has been reaped


@contextmanager
def running(control: Control):
    """The calling thread works for the task with this control."""
    _current.control = control
    try:
        yield
    finally:
        _current.control = None


def watch(proc) -> None:
    """Register a subprocess started for the current task (no-op outside a task, e.g. a synchronous command)."""
    control = getattr(_current, "control", None)
    if control is not None:
        control.started(proc)
