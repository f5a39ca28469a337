"""Figure 2/3: empty-job throughput of the real JobEngine versus raw INSERT+UPDATE transaction pairs."""
import time
from types import SimpleNamespace

from sqlalchemy import create_engine, text

from sqlmeter import SqlMeter
from volstack.db.engine import Database
from volstack.jobs.engine import PENDING, JobEngine


def raw_pairs(db: Database, n: int) -> float:
    """n single-row INSERT transactions each followed by an UPDATE transaction of that row, through the
    bare DB-API driver on one connection (for SQLite: the same file, the same pragmas). Returns pairs/s."""
    conn = db.engine.raw_connection()      # a pooled driver connection: it has the engine's pragmas
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS bench_raw (id INTEGER PRIMARY KEY, status INTEGER, result TEXT)")
        conn.commit()
        begin = "BEGIN IMMEDIATE" if db.is_sqlite else None
        start = time.perf_counter()
        for i in range(n):
            for sql, args in (("INSERT INTO bench_raw (id, status) VALUES (%s, 0)", (i,)),
                              ("UPDATE bench_raw SET status = 1, result = '{}' WHERE id = %s", (i,))):
                if begin:
                    cur.execute(begin)
                cur.execute(sql.replace("%s", "?") if db.is_sqlite else sql, args)
                conn.commit()
        rate = n / (time.perf_counter() - start)
        cur.execute("DROP TABLE bench_raw")
        conn.commit()
        return rate
    finally:
        conn.close()


def engine_rate(db: Database, n: int, workers: int = 4, timeout: float = 120.0) -> dict:
    """Submits n empty jobs (one transaction each, as the API does) to a running JobEngine and waits until
    all are done. Returns jobs/s end to end, submissions/s, SQL statements and driver time per job."""
    engine = JobEngine(db, lambda job, progress: {}, workers=workers, name="bench-jobs", heartbeat_seconds=3600)
    ctx = SimpleNamespace(account_id=None, user_id=None, domain_id=None)
    # Completion is watched through a separate plain engine: no BEGIN IMMEDIATE, so it takes no write lock.
    watcher = create_engine(db.url)
    engine.start()
    try:
        with SqlMeter(db.engine) as sql:
            start = time.perf_counter()
            for _ in range(n):
                with db.session() as s:
                    engine.submit(s, cmd="benchEmpty", params={}, ctx=ctx)
                engine.wake()
            submitted = time.perf_counter()
            _wait_done(watcher, submitted + timeout)
            done = time.perf_counter()
        failed = _count(watcher, "SELECT count(*) FROM async_job WHERE status != 1 AND cmd = 'benchEmpty'")
        if failed:
            raise RuntimeError(f"{failed} empty jobs did not succeed")
        return {"jobs": n / (done - start), "submits": n / (submitted - start),
                "statements": sql.statements / n, "driver_us": sql.seconds / n * 1e6}
    finally:
        engine.stop()
        watcher.dispose()


def _wait_done(watcher, deadline: float) -> None:
    while _count(watcher, f"SELECT count(*) FROM async_job WHERE status = {PENDING}"):
        if time.perf_counter() > deadline:
            raise TimeoutError("jobs still pending at the deadline")
        time.sleep(0.005)


def _count(eng, sql: str) -> int:
    with eng.connect() as c:
        return c.execute(text(sql)).scalar()


def job_figures(url: str, n: int, workers: int = 4) -> dict:
    db = Database(url)
    db.upgrade()
    try:
        before = raw_pairs(db, n)
        jobs = engine_rate(db, n, workers)
        return dict(jobs, raw=max(before, raw_pairs(db, n)))     # the better of a run before and after
    finally:
        db.dispose()
