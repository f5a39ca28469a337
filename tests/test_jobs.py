"""The job engine on a real database: persistence, serialization, multi-server claims, reconciliation."""
import threading

from sqlalchemy import select

from volstack import crypto
from volstack.db.engine import Database
from volstack.db.models import AsyncJob
from volstack.jobs.engine import FAILED, PENDING, SUCCEEDED, JobEngine
from volstack.services.context import system_context


def make_db(db_url, tmp_path):
    crypto.load_key(tmp_path / "k")
    db = Database(db_url)
    db.upgrade()
    return db


def submit(db, engine, n=1, sync_key=None, params=None):
    ids = []
    with db.session() as s:
        for i in range(n):
            job = engine.submit(s, cmd="test", params=params or {"i": i}, ctx=system_context(), sync_key=sync_key)
            ids.append(job.id)
    engine.wake()
    return ids


def wait_done(db, ids, timeout=30):
    """Poll the database (the way a client polls queryAsyncJobResult) until every job left PENDING."""
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not done.is_set():
            with db.session() as s:
                rows = list(s.scalars(select(AsyncJob).where(AsyncJob.id.in_(ids))))
            if all(r.status != PENDING for r in rows):
                return {r.id: r for r in rows}
            done.wait(0.02)
    finally:
        deadline.cancel()
    raise AssertionError("jobs did not finish")


def test_job_row_is_persisted_before_work_and_result_recorded(db_url, tmp_path):
    db = make_db(db_url, tmp_path)
    started = threading.Event()
    release = threading.Event()
    seen = {}

    def executor(job, progress):
        with db.session() as s:          # the row is committed before the work starts
            seen["row"] = s.get(AsyncJob, job.id).status
        progress(40, proc_status=1)
        started.set()
        release.wait(10)
        return {"thing": {"n": job.params["i"]}}

    eng = JobEngine(db, executor, workers=2, heartbeat_seconds=0.2)
    eng.start()
    try:
        [jid] = submit(db, eng)
        assert started.wait(10)
        with db.session() as s:
            row = s.get(AsyncJob, jid)
            assert (row.status, row.running, row.progress, row.proc_status) == (PENDING, True, 40, 1)
        release.set()
        row = wait_done(db, [jid])[jid]
        assert seen["row"] == PENDING
        assert (row.status, row.result_code, row.result) == (SUCCEEDED, 0, {"thing": {"n": 0}})
    finally:
        release.set()
        eng.stop()


def test_failure_is_recorded_with_code_and_text(db_url, tmp_path):
    from volstack.errors import InsufficientCapacity
    db = make_db(db_url, tmp_path)

    def executor(job, progress):
        if job.params["i"] == 0:
            raise InsufficientCapacity("no pool has room")
        raise KeyError("boom")

    eng = JobEngine(db, executor, workers=1, heartbeat_seconds=0.2)
    eng.start()
    try:
        ids = submit(db, eng, 2)
        rows = wait_done(db, ids)
        assert (rows[ids[0]].status, rows[ids[0]].result_code) == (FAILED, 533)
        assert rows[ids[0]].result["errortext"] == "no pool has room"
        text = rows[ids[1]].result["errortext"]       # the type and where to look; never the exception's own text,
        assert rows[ids[1]].result_code == 530 and "KeyError" in text and rows[ids[1]].uuid in text and "boom" not in text
    finally:
        eng.stop()


def test_jobs_on_one_object_never_interleave_and_keep_order(tmp_path):
    db = make_db(f"sqlite:///{tmp_path / 'db'}", tmp_path)
    lock = threading.Lock()
    running = {"n": 0, "max": 0}
    order = []

    def executor(job, progress):
        with lock:
            running["n"] += 1
            running["max"] = max(running["max"], running["n"])
            order.append(job.params["i"])
        progress(50)
        with lock:
            running["n"] -= 1
        return {}

    eng = JobEngine(db, executor, workers=4, heartbeat_seconds=0.2)
    eng.start()
    try:
        ids = submit(db, eng, 20, sync_key="Volume:1")
        wait_done(db, ids)
        assert running["max"] == 1
        assert order == list(range(20))
    finally:
        eng.stop()


def test_jobs_on_different_objects_run_in_parallel(tmp_path):
    db = make_db(f"sqlite:///{tmp_path / 'db'}", tmp_path)
    barrier = threading.Barrier(2, timeout=10)

    def executor(job, progress):
        barrier.wait()      # both must be running at once, or this times out and the job fails
        return {}

    eng = JobEngine(db, executor, workers=2, heartbeat_seconds=0.2)
    eng.start()
    try:
        ids = submit(db, eng, 1, sync_key="Volume:a") + submit(db, eng, 1, sync_key="Volume:b")
        rows = wait_done(db, ids)
        assert all(r.status == SUCCEEDED for r in rows.values())
    finally:
        eng.stop()


def test_two_servers_on_one_postgres_never_run_a_job_twice(postgres, tmp_path):
    url = postgres.createdb("twoservers")
    db_a, db_b = make_db(url, tmp_path), Database(url)
    runs = []
    lock = threading.Lock()

    def executor_for(name):
        def run(job, progress):
            with lock:
                runs.append((job.id, name))
            return {}
        return run

    a = JobEngine(db_a, executor_for("a"), workers=4, name="ms-a", heartbeat_seconds=0.2)
    b = JobEngine(db_b, executor_for("b"), workers=4, name="ms-b", heartbeat_seconds=0.2)
    a.start()
    b.start()
    try:
        ids = submit(db_a, a, 150) + submit(db_b, b, 150)
        for i in range(0, len(ids), 10):   # wake both servers as clients keep submitting
            a.wake()
            b.wake()
        wait_done(db_a, ids, timeout=60)
        executed = [jid for jid, _ in runs]
        assert sorted(executed) == sorted(ids), "every job ran exactly once"
        assert {name for _, name in runs} == {"a", "b"}, "both servers took work"
    finally:
        a.stop()
        b.stop()


def test_restart_reconciles_interrupted_jobs(db_url, tmp_path):
    db = make_db(db_url, tmp_path)
    started, release = threading.Event(), threading.Event()

    def stuck(job, progress):
        started.set()
        release.wait(30)
        return {"late": True}

    crashed = JobEngine(db, stuck, workers=1, name="ms-1", heartbeat_seconds=0.2)
    crashed.start()
    [retry_id] = submit(db, crashed, params={"kind": "retry"})
    assert started.wait(10)
    started.clear()
    [fail_id] = submit(db, crashed, params={"kind": "fail"})   # queued behind the stuck one
    # The server "crashes": its threads stop heartbeating; a new process starts under the same name.
    crashed._stop.set()
    ran = []

    def executor(job, progress):
        ran.append(job.params["kind"])
        return {"ok": True}

    restarted = JobEngine(db, executor, interrupted=lambda job: job.params["kind"], workers=1, name="ms-1",
                          heartbeat_seconds=0.2)
    restarted.start()
    try:
        rows = wait_done(db, [retry_id, fail_id])
        assert rows[retry_id].status == SUCCEEDED and rows[retry_id].result == {"ok": True}
        assert rows[fail_id].status == SUCCEEDED      # never started: simply run by the new server
        release.set()                                  # the old thread wakes up late: it must not overwrite
        crashed.stop()
        with db.session() as s:
            assert s.get(AsyncJob, retry_id).result == {"ok": True}
    finally:
        release.set()
        restarted.stop()


def test_interrupted_job_that_cannot_be_retried_fails_with_a_reason(db_url, tmp_path):
    db = make_db(db_url, tmp_path)
    started, release = threading.Event(), threading.Event()

    def stuck(job, progress):
        started.set()
        release.wait(30)
        return {}

    dead = JobEngine(db, stuck, workers=1, name="ms-dead", heartbeat_seconds=0.2)
    dead.start()
    [jid] = submit(db, dead, sync_key="Host:x")
    assert started.wait(10)
    dead._stop.set()                    # stops heartbeating; its job is stuck mid-way
    other = JobEngine(db, lambda j, p: {}, workers=1, name="ms-other", heartbeat_seconds=0.2)
    other.start()
    try:
        row = wait_done(db, [jid])[jid]      # found by the other server once ms-dead's heartbeat is stale
        assert row.status == FAILED and row.result_code == 530
        assert "interrupted" in row.result["errortext"]
        [after] = submit(db, other, sync_key="Host:x")     # the object's lock was released
        assert wait_done(db, [after])[after].status == SUCCEEDED
    finally:
        release.set()
        dead.stop()
        other.stop()


def test_finished_jobs_expire(tmp_path):
    db = make_db(f"sqlite:///{tmp_path / 'db'}", tmp_path)
    minutes = {"v": 1440}
    eng = JobEngine(db, lambda j, p: {}, workers=1, heartbeat_seconds=0.2, expire_minutes=lambda: minutes["v"])
    eng.start()
    try:
        ids = submit(db, eng, 3)
        wait_done(db, ids)
        assert eng.expire() == 0
        minutes["v"] = -1
        assert eng.expire() == 3
    finally:
        eng.stop()


def test_api_job_reports_progress_while_it_works(server):
    """An async command that writes, reports progress and waits: pollers see the progress and the write."""
    from support import client
    from helpers import wait_job
    from volstack.api.registry import API, ROOT, Command, Param, Registry, Success
    from volstack.db.models import Zone
    gate, reached = threading.Event(), threading.Event()

    def slow(req, p):
        req.s.add(Zone(name=p["name"]))
        req.progress(60, proc_status=2)
        reached.set()
        assert gate.wait(10)
        return Success()

    reg = Registry()
    for c in API.commands.values():
        reg.add(c)
    reg.add(Command("slowThing", "test", slow, [Param("name", "string", "a name", required=True)],
                    is_async=True, response_key="success", access=ROOT))
    server.api.registry = reg
    try:
        jobid = client(server, fetch_result=False).slowThing(name="made-by-job")["jobid"]
        assert reached.wait(10)
        raw = client(server, fetch_result=False)
        job = raw.queryAsyncJobResult(jobid=jobid)
        assert (job["jobstatus"], job["jobprogress"], job["jobprocstatus"]) == (0, 60, 2)
        assert raw.listZones(name="made-by-job")["count"] == 1
        gate.set()
        assert wait_job(server, jobid)["jobresult"] == {"success": True}
    finally:
        gate.set()
