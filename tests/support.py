"""Helpers shared by the tests: start a management server, make a cs client for it."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_server(db_url, tmp_path, **kw):
    from volstack.management import ManagementServer
    kw.setdefault("heartbeat_seconds", 0.5)
    return ManagementServer(db_url, tmp_path / "volstack.key", port=0, **kw).start()


def client(ms, key=None, secret=None, **kw):
    from cs import CloudStack
    return CloudStack(endpoint=ms.endpoint, key=key or ms.admin.api_key, secret=secret or ms.admin_secret,
                      **{"poll_interval": 0.05, "fetch_result": True, **kw})
