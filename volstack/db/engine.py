"""Engine, sessions and schema upgrades. SQLite (embedded default) and PostgreSQL."""
import contextlib
import os
from pathlib import Path

from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
_STARTUP_LOCK = 73180001


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// URLs and pick psycopg 3 for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Database:
    def __init__(self, url: str):
        self.url = normalize_url(url)
        u = make_url(self.url)
        self.is_sqlite = u.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if u.database and u.database != ":memory:":
                Path(u.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # pysqlite's own transaction handling defers BEGIN; emit it ourselves so that a
            # read-then-write transaction holds the write lock from the start (no upgrade deadlocks).
            # Read-only sessions take a plain BEGIN: in WAL mode they never wait for writers.
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql(
                "BEGIN" if conn.get_execution_options().get("readonly") else "BEGIN IMMEDIATE"))
        else:
            self.engine = create_engine(self.url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self.ReadSession = sessionmaker(self.engine.execution_options(readonly=True), expire_on_commit=False)

    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection_url"] = self.url
        with self.engine.connect() as conn:
            if self.is_sqlite:
                # batch migrations recreate tables (copy, DROP, rename): with foreign keys enforced, dropping a table
                # that rows of another table reference fails. The pragma only takes effect outside a transaction.
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    self._serialize(conn)      # several servers may start at once on one PostgreSQL
                    cfg.attributes["connection"] = conn
                    alembic_command.upgrade(cfg, "head")
                    if self.is_sqlite:
                        bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if bad:
                            raise RuntimeError(f"the schema upgrade left rows whose references break: {bad[:5]}")
            finally:
                if self.is_sqlite:
                    conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")

    def _serialize(self, conn) -> None:
        if not self.is_sqlite:        # SQLite's BEGIN IMMEDIATE already serializes writers
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_STARTUP_LOCK})")

    @contextlib.contextmanager
    def exclusive_session(self):
        """A session that no other server's exclusive session overlaps (start-up bootstrap)."""
        with self.session() as s:
            self._serialize(s.connection())
            yield s

    @contextlib.contextmanager
    def session(self, readonly: bool = False):
        """One transaction. readonly: the caller promises not to write (lets SQLite readers run in parallel)."""
        s = (self.ReadSession if readonly else self.Session)()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record):
    dbapi_conn.isolation_level = None       # BEGIN is emitted by the 'begin' listener
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def sqlite_url(data_dir: str | os.PathLike) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'volstack.db'}"
