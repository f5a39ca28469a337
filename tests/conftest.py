import itertools
import os
import uuid
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cephcluster import CephCluster  # noqa: E402
from guest import GuestVM  # noqa: E402
from nfsserver import shared_server, stop_shared_server  # noqa: E402
from pgserver import PostgresServer  # noqa: E402
from support import ROOT, client, start_server  # noqa: E402,F401

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




@pytest.fixture
def server(request, tmp_path):
    """A management server on SQLite; on SQLite and PostgreSQL when the test also asks for db_url (a module
    does so for all its tests with `pytestmark = pytest.mark.usefixtures("db_url")`)."""
    url = request.getfixturevalue("db_url") if "db_url" in request.fixturenames else f"sqlite:///{tmp_path / 'volstack.db'}"
    ms = start_server(url, tmp_path)
    yield ms
    ms.stop()


@pytest.fixture
def server_any_db(db_url, tmp_path):
    ms = start_server(db_url, tmp_path)
    yield ms
    ms.stop()




@pytest.fixture
def cs(server):
    return client(server)


@pytest.fixture(scope="session")
def _nfs_session():
    yield
    stop_shared_server()


@pytest.fixture
def nfs_server(_nfs_session):
    """The machine's one throwaway NFS server (nfs://127.0.0.1/export), started on first use."""
    return shared_server()


@pytest.fixture
def nfs_pool(nfs_server, tmp_path):
    """A fresh NFS export for this test (a primary storage pool): (url, local directory)."""
    pseudo, path = f"/pool-{uuid.uuid4().hex[:8]}", tmp_path / "nfs-pool"
    url = nfs_server.add_export(pseudo, path)
    yield url, path
    nfs_server.remove_export(pseudo)


@pytest.fixture(scope="module")
def guest_vm(tmp_path_factory):
    """A booted TCG test guest (tests/guest.py GuestVM): .qmp, .console, .plug(), .unplug()."""
    with GuestVM(tmp_path_factory.mktemp("guest")) as vm:
        yield vm


@pytest.fixture(scope="session")
def ceph():
    """One throwaway Ceph cluster (scripts/ceph-up.sh) for the whole session: tests/cephcluster.py."""
    cluster = CephCluster().start()
    yield cluster
    cluster.stop()
