"""Counts SQL statements and the time spent inside the DB-API driver's execute() for an engine.

The time includes waiting for locks inside the driver (SQLite's busy handler, PostgreSQL row locks)."""
import threading
import time

from sqlalchemy import event


class SqlMeter:
    def __init__(self, engine, this_thread_only: bool = False):
        self.engine, self.statements, self.seconds = engine, 0, 0.0
        self.thread = threading.get_ident() if this_thread_only else None

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        if self.thread in (None, threading.get_ident()):
            conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn, cursor, statement, parameters, context, executemany):
        t0 = conn.info.pop("bench_t0", None)   # None: not ours, or started before the meter did
        if t0 is not None:
            self.statements += 1               # updated from several threads: approximate, good enough
            self.seconds += time.perf_counter() - t0

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)
