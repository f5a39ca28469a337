"""Primary storage pools on Simulator hosts: the control plane without real storage."""
import pytest
from cs import CloudStackApiException

from support import add_datacenter, client

pytestmark = pytest.mark.usefixtures("db_url")     # every test on SQLite and PostgreSQL


@pytest.fixture
def sim(server):
    api = client(server)
    dc = add_datacenter(api, "pz", "pp", "pc", ["http://sim1"])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    host = dc["host"]
    return api, zone, pod, cl, host


def test_create_list_update_delete_pool(sim):
    api, zone, pod, cl, host = sim
    pool = api.createStoragePool(name="nfs1", url="nfs://10.9.9.9/export/p1", zoneid=zone["id"], podid=pod["id"],
                                 clusterid=cl["id"], tags="ssd,fast", capacitybytes=100 * 2**30)["storagepool"]
    assert (pool["state"], pool["type"], pool["scope"], pool["path"], pool["ipaddress"]) == \
        ("Up", "NetworkFilesystem", "CLUSTER", "/export/p1", "10.9.9.9")
    assert pool["tags"] == "ssd,fast" and pool["disksizetotal"] == 100 * 2**30
    assert pool["overprovisionfactor"] == "2.0" and pool["capacitytotal"] == 200 * 2**30
    listed = api.listStoragePools(name="nfs1")["storagepool"][0]
    assert listed["id"] == pool["id"]
    upd = api.updateStoragePool(id=pool["id"], enabled=False, tags="slow")["storagepool"]
    assert (upd["state"], upd["tags"]) == ("Disabled", "slow")
    api.updateConfiguration(name="storage.overprovisioning.factor", value="3", storageid=pool["id"])
    assert api.listStoragePools(id=pool["id"])["storagepool"][0]["overprovisionfactor"] == "3.0"
    assert api.deleteStoragePool(id=pool["id"])["success"] is True
    assert api.listStoragePools(name="nfs1") == {}


def test_zone_and_host_scope_and_bad_urls(sim):
    api, zone, pod, cl, host = sim
    z = api.createStoragePool(name="smp", url="SharedMountPoint://localhost/mnt/ocfs2", zoneid=zone["id"],
                              scope="zone", hypervisor="Simulator")["storagepool"]
    assert (z["scope"], z["type"], z["hypervisor"]) == ("ZONE", "SharedMountPoint", "Simulator")
    local = api.createStoragePool(name="local1", url="file://localhost/var/lib/vs", zoneid=zone["id"], scope="host",
                                  hostid=host["id"])["storagepool"]
    assert local["scope"] == "HOST" and local["type"] == "Filesystem"
    assert api.listStoragePools(hostid=host["id"])["count"] == 2
    for bad, why in [({"url": "ftp://x/y"}, "Unable to figure out the scheme"),
                     ({"url": "nfs:///nohost"}, "needs a server"),
                     ({"url": "nfs://h/"}, "no usable path"),
                     ({"url": "file://localhost/x", "scope": "cluster"}, "scope=host"),
                     ({"url": "nfs://h/e", "scope": "zone"}, "needs hypervisor"),
                     ({"url": "nfs://h/e", "scope": "galaxy"}, "Invalid scope")]:
        with pytest.raises(CloudStackApiException) as e:
            api.createStoragePool(name="bad", zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"], **bad)
        assert e.value.error["errorcode"] == 431 and why in e.value.error["errortext"], (bad, e.value.error)
    assert api.listStoragePools(name="bad") == {}
    with pytest.raises(CloudStackApiException) as e:
        api.deleteZone(id=zone["id"])
    assert "storage pool" in e.value.error["errortext"]


def test_pool_without_hosts_is_refused_and_nothing_recorded(server):
    api = client(server)
    zone = api.createZone(name="empty", networktype="Advanced")["zone"]
    with pytest.raises(CloudStackApiException) as e:
        api.createStoragePool(name="p", url="nfs://h/e", zoneid=zone["id"], scope="zone", hypervisor="KVM")
    assert e.value.error["errorcode"] == 534 and "no Up host" in e.value.error["errortext"]
    assert api.listStoragePools() == {}


def test_maintenance_cycle_and_browser(sim):
    api, zone, pod, cl, host = sim
    pool = api.createStoragePool(name="m1", url="nfs://h/m1", zoneid=zone["id"], podid=pod["id"],
                                 clusterid=cl["id"])["storagepool"]
    assert api.enableStorageMaintenance(id=pool["id"])["storagepool"]["state"] == "Maintenance"
    with pytest.raises(CloudStackApiException):
        api.updateStoragePool(id=pool["id"], enabled=True)
    assert api.cancelStorageMaintenance(id=pool["id"])["storagepool"]["state"] == "Up"
    assert api.syncStoragePool(id=pool["id"])["storagepool"]["disksizetotal"] > 0
    assert api.listStoragePoolObjects(id=pool["id"]) == {}
    # as in CloudStack, / is the pool's root and every path lies under it: ../../etc is <pool>/etc
    assert api.listStoragePoolObjects(id=pool["id"], path="/") == {}
    assert api.listStoragePoolObjects(id=pool["id"], path="../../etc") == {}
    assert [p["name"] for p in api.listStorageProviders(type="primary")["dataStoreProvider"]] == ["DefaultPrimary"]
