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
