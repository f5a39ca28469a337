"""Raw signed requests, for tests that need to control every byte the client sends; job polling; the
records a migration job leaves when its management server dies."""
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import requests

from volstack.api.signing import sign


def expires(seconds=600) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S%z")


def signed(ms, params: dict, *, key=None, secret=None, version3=True, keep_tilde=False) -> dict:
    p = {"apiKey": key or ms.admin.api_key, "response": "json", **{k: str(v) for k, v in params.items()}}
    if version3:
        p.setdefault("signatureVersion", "3")
        p.setdefault("expires", expires())
    p["signature"] = sign(p, secret or ms.admin_secret, keep_tilde=keep_tilde)
    return p


def get(ms, params, **kw) -> requests.Response:
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in signed(ms, params, **kw).items())
    return requests.get(f"{ms.endpoint}?{query}", timeout=30)


def post(ms, params, **kw) -> requests.Response:
    return requests.post(ms.endpoint, data=signed(ms, params, **kw), timeout=30)


def wait_job(ms, jobid, polls=2000):
    """Poll queryAsyncJobResult as clients do (every 10 ms here) until the job leaves PENDING."""
    import time

    from support import client
    api = client(ms, fetch_result=False)
    for _ in range(polls):
        job = api.queryAsyncJobResult(jobid=jobid)
        if job["jobstatus"] != 0:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {jobid} did not finish")


def migration_interrupted(ms, vol_uuid, pool_uuid, path, fmt, live, task=None):
    """What volume_migration.migrate() commits before the host works: Migrating, with where the volume goes
    (and the id of the host's task; without it settling finds the task by what it works on)."""
    from sqlalchemy import select

    from volstack.db.storage_models import Volume
    with ms.db.session() as s:
        vol = s.scalar(select(Volume).where(Volume.uuid == vol_uuid))
        vol.state = "Migrating"
        vol.details = {**(vol.details or {}), "migrating_to": {"pool": pool_uuid, "path": path, "format": fmt,
                                                               "live": live, **({"task": task} if task else {})}}


def pool_spec(ms, pool_uuid) -> dict:
    """The pool as the agent's commands take it."""
    from sqlalchemy import select

    from volstack.db.storage_models import StoragePool
    from volstack.drivers import driver_for
    with ms.db.session(readonly=True) as s:
        pool = s.scalar(select(StoragePool).where(StoragePool.uuid == pool_uuid))
        return driver_for(pool.provider).spec(pool)
