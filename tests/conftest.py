import itertools
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from pgserver import PostgresServer  # noqa: E402

_dbs = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    pg = PostgresServer().start()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Database tests run on both the embedded default and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'volstack.db'}"
    return request.getfixturevalue("postgres").createdb(f"t{os.getpid()}_{next(_dbs)}")


def start_server(db_url, tmp_path, **kw):
    from volstack.management import ManagementServer
    kw.setdefault("heartbeat_seconds", 0.5)
    return ManagementServer(db_url, tmp_path / "volstack.key", port=0, **kw).start()


@pytest.fixture
def server(tmp_path):
    ms = start_server(f"sqlite:///{tmp_path / 'volstack.db'}", tmp_path)
    yield ms
    ms.stop()


@pytest.fixture
def server_any_db(db_url, tmp_path):
    ms = start_server(db_url, tmp_path)
    yield ms
    ms.stop()


def client(ms, key=None, secret=None, **kw):
    from cs import CloudStack
    return CloudStack(endpoint=ms.endpoint, key=key or ms.admin.api_key, secret=secret or ms.admin_secret,
                      **{"poll_interval": 0.05, "fetch_result": True, **kw})


@pytest.fixture
def cs(server):
    return client(server)
