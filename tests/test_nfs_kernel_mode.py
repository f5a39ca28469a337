"""NFS pools in kernel-mount mode (pool detail nfsmountmode=kernel): refused, with the reason, by a host
without a kernel NFS client, and nothing is recorded; a bad mode is a 431."""
import pytest
from cs import CloudStackApiException

from agentproc import AgentProcess
from support import add_datacenter, client
from volstack.agent.nfsmount import kernel_client_problem


@pytest.fixture
def kvm_host(server, tmp_path):
    agent = AgentProcess(tmp_path / "agent", name="kmode").start()
    api = client(server)
    dc = add_datacenter(api, "nz", "np", "nc", [agent])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    yield api, dict(zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"])
    agent.stop()


def test_kernel_mode_is_refused_by_a_host_without_a_kernel_nfs_client(kvm_host):
    problem = kernel_client_problem("this host")
    if problem is None:
        pytest.skip("this machine has a kernel NFS client, so there is no refusal to show")
    api, where = kvm_host
    with pytest.raises(CloudStackApiException) as e:
        api.createStoragePool(name="knfs", url="nfs://127.0.0.1/export", **where,
                              **{"details[0].nfsmountmode": "kernel"})
    text = e.value.error["errortext"]
    assert "kernel-mount mode" in text and "userspace" in text, text
    assert "host kmode" in text and ("no NFS client" in text or "mount.nfs" in text), text
    assert api.listStoragePools(name="knfs") == {}, "nothing recorded"


def test_an_unknown_mount_mode_is_a_431(kvm_host):
    api, where = kvm_host
    with pytest.raises(CloudStackApiException) as e:
        api.createStoragePool(name="bad", url="nfs://127.0.0.1/export", **where, **{"details[0].nfsmountmode": "fuse"})
    assert e.value.error["errorcode"] == 431 and "userspace" in e.value.error["errortext"]
    with pytest.raises(CloudStackApiException) as e:
        api.createStoragePool(name="bad2", url="SharedMountPoint://localhost/tmp", **where,
                              **{"details[0].nfsmountmode": "kernel"})
    assert "NFS pools only" in e.value.error["errortext"]
