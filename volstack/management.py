"""The management server: database, settings, job engine and the HTTP API, wired together."""
import logging
import threading
import time
from pathlib import Path

import waitress
from waitress import wasyncore

from volstack import crypto
from volstack.api import commands  # noqa: F401  (declares every command)
from volstack.api.server import ApiApp
from volstack.db.engine import Database
from volstack.jobs.engine import JobEngine
from volstack.services import accounts
from volstack.services import settings as S

log = logging.getLogger("volstack")


class ManagementServer:
    def __init__(self, db_url: str, key_file: str | Path, *, host: str = "127.0.0.1", port: int = 8080,
                 workers: int = 4, threads: int = 8, name: str | None = None, heartbeat_seconds: float = 5.0,
                 admin_password: str | None = None, host_check_seconds: float = 10, settle_after_seconds: float = 120):
        """settle_after_seconds: how long a VM or volume may stay transitional with no job on it before the
        sweep settles it (services/recovery.py)."""
        self.host, self.port, self.threads = host, port, threads
        self.host_check_seconds = host_check_seconds
        self.settle_after_seconds = settle_after_seconds
        crypto.load_key(key_file)
        self.db = Database(db_url)
        self.db.upgrade()
        with self.db.exclusive_session() as s:
            self.admin = accounts.bootstrap(s, admin_password)
            self.admin_secret = accounts.user_secret(self.admin)
        self.settings = S.Settings(self.db)
        self.api = ApiApp(self)
        self.jobs = JobEngine(self.db, self.api.execute_job, self.api.on_interrupt, workers=workers, name=name,
                              heartbeat_seconds=heartbeat_seconds,
                              expire_minutes=lambda: self.settings.get(S.JOB_EXPIRE_MINUTES),
                              queue_limit=self._queue_limit, expired=self.api.on_expired)
        self._http = None
        self._thread = None
        self._cache: dict = {}
        self._add_periodic_tasks()

    def _queue_limit(self, queue_key: str):
        """Throttled job queues: snapshot jobs per host (CloudStack's snapshothost sync queue)."""
        if queue_key.startswith("snapshothost:"):
            return self.settings.get(S.CONCURRENT_SNAPSHOTS_PER_HOST)
        return None

    def _add_periodic_tasks(self) -> None:
        from volstack.services import agents
        from volstack.services.context import system_context
        from volstack.api.commands.vms import reconcile_submitter
        reconcile = reconcile_submitter(self.jobs)
        # at start too: the hosts are reconciled with the database as soon as a management server starts
        self.jobs.add_periodic("host heartbeat", lambda: self.host_check_seconds,
                               lambda: agents.check_hosts(self.db, system_context(), 3 * self.host_check_seconds,
                                                          reconcile) or self.jobs.wake(), at_start=True)
        from volstack.services.recovery import TransitionalSweep
        sweep = TransitionalSweep(self.db, self.settle_after_seconds)
        self.jobs.add_periodic("transitional sweep", lambda: min(self.host_check_seconds, self.settle_after_seconds),
                               lambda: sweep.run(system_context()))
        from volstack.services import volumes
        self.jobs.add_periodic("pool statistics", lambda: self.settings.get(S.VOLUME_STATS_INTERVAL) / 1000,
                               lambda: agents.refresh_pool_stats(self.db))
        self.jobs.add_periodic("volume statistics", lambda: self.settings.get(S.VOLUME_STATS_INTERVAL) / 1000,
                               lambda: volumes.collect_stats(self.db))
        self.jobs.add_periodic("storage cleanup", lambda: self.settings.get(S.STORAGE_CLEANUP_INTERVAL),
                               lambda: self.settings.get(S.STORAGE_CLEANUP_ENABLED) and self._storage_cleanup())
        from volstack.services import imagestores
        self.jobs.add_periodic("image store statistics", lambda: self.settings.get(S.VOLUME_STATS_INTERVAL) / 1000,
                               lambda: imagestores.refresh_stats(self.db))
        from volstack.services import extracts, post_uploads
        self.jobs.add_periodic("upload monitor", lambda: self.settings.get(S.UPLOAD_MONITORING_INTERVAL),
                               lambda: post_uploads.monitor(self.db, system_context()))
        self.jobs.add_periodic("extract url cleanup", lambda: self.settings.get(S.EXTRACT_URL_CLEANUP),
                               lambda: extracts.cleanup(self.db))
        from volstack.services import vms
        from volstack.services import orphans
        self.jobs.add_periodic("orphan scan", lambda: self.settings.get(S.ORPHAN_SCAN_INTERVAL) or 10 ** 9,
                               lambda: self.settings.get(S.ORPHAN_SCAN_INTERVAL) and orphans.scan(self.db, system_context()))
        self.jobs.add_periodic("vm expunge", lambda: self.settings.get(S.EXPUNGE_INTERVAL),
                               lambda: vms.expunge_destroyed(self.db, system_context()))
        from volstack.api.commands.snapshot_policies import recurring_submitter
        from volstack.services.snapshot_scheduler import SnapshotScheduler
        self.snapshot_scheduler = SnapshotScheduler(self.db, recurring_submitter(self.jobs))
        self.jobs.add_periodic("snapshot scheduler", lambda: self.settings.get(S.SNAPSHOT_POLL_INTERVAL),
                               lambda: self.snapshot_scheduler.run_due() and self.jobs.wake(),
                               at_start=True)     # slots missed while no server ran fire once, now
        from volstack.api.commands.snapshots import backup_retry_submitter
        from volstack.services import snapshot_backups
        retry = backup_retry_submitter(self.jobs)
        # due retries are looked for every backup.retry.interval, at least every 10 s (a retry is at most that late)
        self.jobs.add_periodic("snapshot backup retries",
                               lambda: min(10, self.settings_value(S.BACKUP_RETRY_INTERVAL) or 10),
                               lambda: snapshot_backups.submit_due(self.db, system_context(), retry) and self.jobs.wake(),
                               at_start=True)

    def _storage_cleanup(self) -> None:
        from volstack.services import template_cache, templates, volumes
        from volstack.services.context import system_context
        volumes.expunge_destroyed(self.db, system_context())
        template_cache.cleanup(self.db, system_context())
        templates.cleanup_store_copies(self.db)

    # Settings read on every request are cached for a few seconds. Inside a request pass its session:
    # on SQLite a second session would wait for the lock the request's own transaction holds.
    def settings_value(self, key: S.ConfigKey, s=None):
        hit = self._cache.get(key.name)
        now = time.monotonic()
        if hit and now - hit[1] < 5:
            return hit[0]
        value = S.Settings.value_in(s, key) if s is not None else self.settings.get(key)
        self._cache[key.name] = (value, now)
        return value

    @property
    def json_content_type(self) -> str:
        return self.settings_value(S.JSON_CONTENT_TYPE)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/client/api"

    def start(self) -> "ManagementServer":
        self.jobs.start()
        # asyncore_loop_timeout is an int in waitress: 0.2 became 0, a select() busy loop eating a core
        self._http = waitress.create_server(self.api, host=self.host, port=self.port, threads=self.threads,
                                            ident="volstack", channel_timeout=300, asyncore_loop_timeout=1)
        self.port = self._http.effective_port
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()
        log.info("management server %s listening on %s", self.jobs.name, self.endpoint)
        return self

    def _serve(self):
        try:
            self._http.run()
        except OSError:
            pass   # closed by stop()

    def stop(self) -> None:
        if self._http is not None:
            # Let running requests finish, then close every socket; the loop ends when its map is empty.
            self._http.task_dispatcher.shutdown(timeout=10)
            wasyncore.close_all(self._http._map)
            self._thread.join(timeout=10)
            self._http = None
        self.jobs.stop()
        self.db.dispose()
