"""Persistent asynchronous jobs.

- A job row is committed before any work starts (submit), so a crash never loses a request.
- Workers claim a job with one conditional UPDATE (running=false -> true); on a shared PostgreSQL two
  management servers can never both claim it.
- Jobs on one object share a sync key; the key's row in async_job_lock (a primary key) lets only one
  of them run at a time, in submission order.
- A queue key (e.g. the host of a snapshot) admits at most queue_limit(key) running jobs: each holds one of
  the rows `<key>#0..n-1` in async_job_lock. Jobs waiting for a slot longer than job.expire.minutes fail.
- There is no wall-clock limit: a job runs as long as it runs. Progress is recorded as it is reported.
- Every server heartbeats in mshost. Running jobs of a server that stopped heartbeating (or that
  restarted) are reconciled: retried when the command is declared safe to retry, else failed with a
  reason. Finished job records are deleted after job.expire.minutes.
"""
import logging
import socket
import threading
import time
import traceback
from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from volstack.db.models import AsyncJob, JobLock, ManagementServer, utcnow
from volstack.errors import CloudError

log = logging.getLogger("volstack.jobs")

PENDING, SUCCEEDED, FAILED, CANCELLED = 0, 1, 2, 3
Candidate, Older = aliased(AsyncJob), aliased(AsyncJob)


class JobProgress:
    """Handed to a running job so it can report progress; each report is persisted."""

    def __init__(self, engine: "JobEngine", job_id: int, job_uuid: str):
        self.engine, self.job_id, self.uuid = engine, job_id, job_uuid

    def __call__(self, percent: int, proc_status: int | None = None) -> None:
        values = {"progress": max(0, min(100, int(percent))), "last_update": utcnow()}
        if proc_status is not None:
            values["proc_status"] = proc_status
        with self.engine.db.session() as s:
            s.execute(update(AsyncJob).where(AsyncJob.id == self.job_id).values(values))


class JobEngine:
    """executor(job: AsyncJob, progress: JobProgress) -> jobresult dict; raises CloudError on failure.
    interrupted(job: AsyncJob) -> "retry" | "fail": what to do with a job whose server died.
    queue_limit(queue key) -> int | None: running jobs a queue admits (None or < 1: unlimited).
    expired(job: AsyncJob) -> str: settles the object of a job that waited too long in a queue; the error text."""

    def __init__(self, db, executor, interrupted=lambda job: "fail", *, workers: int = 4, name: str | None = None,
                 heartbeat_seconds: float = 5.0, expire_minutes=lambda: 1440, queue_limit=lambda key: None,
                 expired=lambda job: f"{job.cmd} waited longer than job.expire.minutes in its queue and was cancelled"):
        self.db, self.executor, self.interrupted = db, executor, interrupted
        self.queue_limit, self.expired = queue_limit, expired
        self.workers = workers
        self.name = name or socket.gethostname()
        self.heartbeat_seconds = heartbeat_seconds
        self.expire_minutes = expire_minutes
        self.msid: int | None = None
        self._wake = threading.Condition()
        self._done = threading.Condition()
        self._running: set = set()            # uuids of the jobs this server's workers run now
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._periodic: list[list] = []       # [name, seconds(), fn, last run]

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        with self.db.session() as s:
            # An earlier instance under the same name is gone: its running jobs were interrupted.
            s.execute(update(ManagementServer).where(ManagementServer.name == self.name, ManagementServer.state == "Up")
                      .values(state="Down"))
            ms = ManagementServer(name=self.name)
            s.add(ms)
            s.flush()
            self.msid = ms.id
        self.reconcile()
        self._stop.clear()
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"job-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        for target, name in ((self._housekeeping, "job-housekeeping"), (self._run_periodic, "periodic")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if wait:
            for t in self._threads:
                t.join(timeout=30)
        self._threads.clear()
        if self.msid is not None:
            with self.db.session() as s:
                s.execute(update(ManagementServer).where(ManagementServer.id == self.msid).values(state="Down"))

    # ------------------------------------------------------------ submit

    def submit(self, s, *, cmd: str, params: dict, ctx, instance_type=None, instance_uuid=None,
               sync_key=None, queue_key=None) -> AsyncJob:
        """Add a job in the caller's session; it becomes visible to workers when that commits."""
        job = AsyncJob(cmd=cmd, params=params, account_id=ctx.account_id, user_id=ctx.user_id,
                       domain_id=ctx.domain_id, instance_type=instance_type, instance_uuid=instance_uuid,
                       sync_key=sync_key, queue_key=queue_key)
        s.add(job)
        s.flush()
        return job

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    # ------------------------------------------------------------ workers

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._claim()
            except Exception:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                with self._wake:
                    self._wake.wait(timeout=0.5)
                continue
            self._run(job)

    def _claim(self) -> AsyncJob | None:
        with self.db.session(readonly=True) as s:      # idle workers poll without taking SQLite's write lock
            waiting = s.execute(select(AsyncJob.queue_key).where(AsyncJob.status == PENDING,
                                                                 AsyncJob.running.is_(False))
                                .order_by(AsyncJob.queue_key.isnot(None)).limit(1)).first()
        if waiting is None:
            return None
        if waiting.queue_key is None:
            job = self._claim_next()
            if job is not None:
                return job
        return self._claim_queued()

    def _claim_next(self) -> AsyncJob | None:
        """One conditional UPDATE … RETURNING claims the oldest job of no queue whose object has no older pending
        job: only one server's worker can flip running false → true on it. Its sync key's lock row is inserted
        in the same transaction (a racing claim of the same key fails there)."""
        older = select(Older.id).where(Older.sync_key == Candidate.sync_key, Older.status == PENDING,
                                       Older.id < Candidate.id).exists()
        locked = select(JobLock.sync_key).where(JobLock.sync_key == Candidate.sync_key).exists()
        pick = (select(Candidate.id).where(Candidate.status == PENDING, Candidate.running.is_(False),
                                           Candidate.queue_key.is_(None),
                                           or_(Candidate.sync_key.is_(None), ~older & ~locked))
                .order_by(Candidate.id).limit(1).scalar_subquery())
        now = utcnow()
        try:
            with self.db.session() as s:
                row = s.execute(update(AsyncJob).where(AsyncJob.id == pick, AsyncJob.status == PENDING,
                                                       AsyncJob.running.is_(False))
                                .values(running=True, owner_msid=self.msid, started=now, last_update=now)
                                .returning(AsyncJob.id, AsyncJob.sync_key)).first()
                if row is None:
                    return None
                if row.sync_key:
                    s.add(JobLock(sync_key=row.sync_key, job_id=row.id))
                    s.flush()
                return s.get(AsyncJob, row.id)
        except IntegrityError:            # another server's job of the same object took the key first
            return None

    def _claim_queued(self) -> AsyncJob | None:
        """Jobs with a queue key also need one of the queue's slots: claimed one candidate at a time."""
        with self.db.session(readonly=True) as s:
            candidates = s.execute(select(AsyncJob.id, AsyncJob.sync_key, AsyncJob.queue_key)
                                   .where(AsyncJob.status == PENDING, AsyncJob.running.is_(False),
                                          AsyncJob.queue_key.isnot(None))
                                   .order_by(AsyncJob.id).limit(32)).all()
        blocked, limits = set(), {}
        for job in candidates:
            if job.sync_key in blocked or job.queue_key in blocked:
                continue
            if job.queue_key not in limits:      # read before the claim's write transaction
                limits[job.queue_key] = self.queue_limit(job.queue_key)
            try:
                with self.db.session() as s:
                    if job.sync_key:
                        # Jobs of one object run in submission order: an older pending one goes first.
                        older = s.scalar(select(AsyncJob.id).where(AsyncJob.sync_key == job.sync_key,
                                                                   AsyncJob.status == PENDING, AsyncJob.id < job.id)
                                         .limit(1))
                        if older is not None:
                            blocked.add(job.sync_key)
                            continue
                        s.add(JobLock(sync_key=job.sync_key, job_id=job.id))
                        s.flush()
                    if not self._take_slot(s, job, limits[job.queue_key]):
                        s.rollback()
                        blocked.add(job.queue_key)
                        continue
                    res = s.execute(update(AsyncJob).where(AsyncJob.id == job.id, AsyncJob.status == PENDING,
                                                           AsyncJob.running.is_(False))
                                    .values(running=True, owner_msid=self.msid, started=utcnow(), last_update=utcnow()))
                    if res.rowcount != 1:
                        s.rollback()
                        continue
                    return s.get(AsyncJob, job.id)
            except IntegrityError:            # another job of the same object is running, or a slot was taken
                blocked.update(k for k in (job.sync_key, job.queue_key) if k)
        return None

    @staticmethod
    def _take_slot(s, job, limit) -> bool:
        """One of the queue's `limit` slots for job (a row `<queue key>#i`); False when all are held."""
        if not limit or limit < 1:
            return True
        held = set(s.scalars(select(JobLock.sync_key).where(JobLock.sync_key.like(f"{job.queue_key}#%"))))
        free = next((i for i in range(limit) if f"{job.queue_key}#{i}" not in held), None)
        if free is None:
            return False
        s.add(JobLock(sync_key=f"{job.queue_key}#{free}", job_id=job.id))
        s.flush()                 # a racing server's insert of the same slot fails here (IntegrityError)
        return True

    def _run(self, job: AsyncJob) -> None:
        progress = JobProgress(self, job.id, job.uuid)
        with self._done:
            self._running.add(job.uuid)
        try:
            result = self.executor(job, progress)
            self._finish(job, SUCCEEDED, 0, result)
        except CloudError as exc:
            self._finish(job, FAILED, exc.errorcode, {"errorcode": exc.errorcode, "errortext": exc.text})
        except Exception as exc:
            log.error("job %s (%s) failed:\n%s", job.uuid, job.cmd, traceback.format_exc())
            # Not str(exc): a database error carries its SQL and values (hashes, wrapped keys); the log has it all.
            self._finish(job, FAILED, 530, {"errorcode": 530, "errortext":
                         f"Internal error while running {job.cmd} ({type(exc).__name__}); the management "
                         f"server's log has the details under job {job.uuid}"})
        finally:
            with self._done:
                self._running.discard(job.uuid)
                self._done.notify_all()

    def _finish(self, job: AsyncJob, status: int, code: int, result: dict) -> None:
        with self.db.session() as s:
            # Only while this server still owns it: a reconciled job keeps the outcome reconciliation gave it.
            res = s.execute(update(AsyncJob).where(AsyncJob.id == job.id, AsyncJob.owner_msid == self.msid,
                                                   AsyncJob.running.is_(True))
                      .values(status=status, running=False, result_code=code, result=result, progress=100,
                              result_type="object", completed=utcnow(), last_update=utcnow()))
            if res.rowcount:
                s.execute(delete(JobLock).where(JobLock.job_id == job.id))
        with self._wake:
            self._wake.notify()   # a job waiting on this sync key may now run

    def wait_finished(self, uuid, seconds: float) -> None:
        """Wait at most `seconds` for a job this server is running to finish (queryAsyncJobResult's bounded
        long poll: the answer is the same, only sooner). Jobs of other servers are not waited for."""
        deadline = time.monotonic() + seconds
        with self._done:
            while uuid in self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._done.wait(left)

    # ------------------------------------------------------------ housekeeping

    def _housekeeping(self) -> None:
        last_expire = 0.0
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                with self.db.session() as s:
                    s.execute(update(ManagementServer).where(ManagementServer.id == self.msid)
                              .values(last_seen=utcnow(), state="Up"))
                self.reconcile()
                if time.monotonic() - last_expire > 60:
                    self.expire()
                    last_expire = time.monotonic()
            except Exception:
                log.exception("job housekeeping failed")

    def add_periodic(self, name: str, seconds, fn, at_start: bool = False) -> None:
        """Run fn() every seconds() seconds; seconds is read each time, so a setting change applies at once.
        at_start: the first run is right after start() rather than one interval later."""
        self._periodic.append([name, seconds, fn, float("-inf") if at_start else time.monotonic()])

    def _run_periodic(self) -> None:
        while not self._stop.wait(0.2):
            for task in self._periodic:
                name, seconds, fn, last = task
                try:
                    if time.monotonic() - last < max(0.1, seconds()):
                        continue
                    task[3] = time.monotonic()
                    fn()
                except Exception:
                    log.exception("periodic task %s failed", name)

    def reconcile(self) -> int:
        """Settle running jobs whose server is gone. Returns how many were settled."""
        stale = utcnow() - timedelta(seconds=self.heartbeat_seconds * 3)
        with self.db.session() as s:
            dead = select(ManagementServer.id).where(ManagementServer.id != self.msid,
                                                     or_(ManagementServer.state == "Down", ManagementServer.last_seen < stale))
            orphans = list(s.scalars(select(AsyncJob).where(AsyncJob.running.is_(True), AsyncJob.status == PENDING,
                                                            AsyncJob.owner_msid.in_(dead))))
        for job in orphans:
            action = self.interrupted(job)
            with self.db.session() as s:
                if action == "retry":
                    values = dict(running=False, owner_msid=None, started=None, last_update=utcnow())
                else:
                    values = dict(running=False, status=FAILED, result_code=530, result_type="object",
                                  completed=utcnow(), last_update=utcnow(),
                                  result={"errorcode": 530, "errortext":
                                          f"{job.cmd} was interrupted because the management server running it stopped; "
                                          "it was not completed and can be submitted again"})
                res = s.execute(update(AsyncJob).where(AsyncJob.id == job.id, AsyncJob.running.is_(True),
                                                       AsyncJob.owner_msid == job.owner_msid).values(values))
                if res.rowcount:
                    s.execute(delete(JobLock).where(JobLock.job_id == job.id))
                    log.warning("job %s (%s) of a stopped server: %s", job.uuid, job.cmd, action)
        if orphans:
            self.wake()
        return len(orphans)

    def expire(self) -> int:
        """Delete finished jobs older than job.expire.minutes and fail queued ones that waited that long."""
        cutoff = utcnow() - timedelta(minutes=self.expire_minutes())
        with self.db.session() as s:
            res = s.execute(delete(AsyncJob).where(AsyncJob.status != PENDING, AsyncJob.completed < cutoff))
            stale = list(s.scalars(select(AsyncJob).where(AsyncJob.status == PENDING, AsyncJob.running.is_(False),
                                                          AsyncJob.queue_key.isnot(None), AsyncJob.created < cutoff)))
        for job in stale:
            with self.db.session() as s:      # claimed meanwhile? then it runs: only a still-waiting job fails
                if s.execute(update(AsyncJob).where(AsyncJob.id == job.id, AsyncJob.status == PENDING,
                                                    AsyncJob.running.is_(False))
                             .values(running=True, owner_msid=self.msid)).rowcount != 1:
                    continue
            try:
                text = self.expired(job)
            except Exception:
                log.exception("settling the object of expired job %s failed", job.uuid)
                text = f"{job.cmd} waited longer than job.expire.minutes in its queue and was cancelled"
            with self.db.session() as s:
                s.execute(update(AsyncJob).where(AsyncJob.id == job.id)
                          .values(status=FAILED, running=False, result_code=534, result_type="object",
                                  result={"errorcode": 534, "errortext": text}, completed=utcnow(),
                                  last_update=utcnow()))
        return res.rowcount + len(stale)
