"""Raw signed requests, for tests that need to control every byte the client sends."""
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
