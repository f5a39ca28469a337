"""Catches an agent call made while the calling thread holds a database write transaction (issue 12: no write
transaction stays open across an agent call, a guest's acknowledgement or a copy).

    with AgentCallTripwire(ms.db) as wire:
        ...drive the API (Simulator hosts and real agents alike)...
    assert wire.violations == []          # [(agent command, where it was called from)]
"""
import threading
import traceback

from sqlalchemy import event
from sqlalchemy.engine import Engine

from volstack.agent.client import AgentClient
from volstack.drivers.hosts import SimulatedHost


_open = threading.local()          # write transactions open per thread, for every engine of this process


def _count() -> int:
    return getattr(_open, "n", 0)


@event.listens_for(Engine, "begin")
def _begin(conn):
    if not conn.get_execution_options().get("readonly"):
        _open.n = _count() + 1


@event.listens_for(Engine, "commit")
@event.listens_for(Engine, "rollback")
def _end(conn):
    if not conn.get_execution_options().get("readonly"):
        _open.n = max(0, _count() - 1)


class AgentCallTripwire:
    """Listens from import on (class-level listeners: adding one to a running engine races its threads)."""

    def __init__(self, db=None):
        self.violations = []

    def _wrap(self, cls, name):
        original = getattr(cls, name)
        wire = self

        def checked(obj, cmd, *args, **kwargs):
            if _count() and cmd not in ("hello",):
                where = [f"{f.filename.rsplit('volstack/', 1)[-1]}:{f.lineno} {f.name}"
                         for f in traceback.extract_stack()[:-1] if "/volstack/" in f.filename
                         and "/tests/" not in f.filename]
                wire.violations.append((cmd, " < ".join(reversed(where[-4:]))))
            return original(obj, cmd, *args, **kwargs)
        setattr(cls, name, checked)
        return original

    def __enter__(self):
        self._originals = [(SimulatedHost, "call", self._wrap(SimulatedHost, "call")),
                           (AgentClient, "call", self._wrap(AgentClient, "call")),
                           (AgentClient, "call_async", self._wrap(AgentClient, "call_async"))]
        return self

    def __exit__(self, *exc):
        for cls, name, original in self._originals:
            setattr(cls, name, original)
