"""Counts the SQL statements the management server's request threads run (waitress workers): what one API
call costs the database, without the job workers' and periodic tasks' statements. Transaction control
(BEGIN/COMMIT/ROLLBACK) is not counted."""
import threading

from sqlalchemy import event


class RequestStatements:
    def __init__(self, engine):
        self.engine, self.statements = engine, []

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread().name.startswith("waitress") and \
                not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._before)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._before)
