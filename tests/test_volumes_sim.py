"""Volumes and VMs on Simulator hosts: lazy allocation, attach rules, allocator reasons, lifecycle."""
import pytest
from cs import CloudStackApiException

from support import add_datacenter, client

pytestmark = pytest.mark.usefixtures("db_url")     # every test on SQLite and PostgreSQL

GIB = 2 ** 30


@pytest.fixture
def dc(server):
    api = client(server)
    dc = add_datacenter(api, "vz", "vp", "vc", ["http://simv"])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    host = dc["host"]
    pool = api.createStoragePool(name="fast", url="nfs://10.0.0.1/fast", zoneid=zone["id"], podid=pod["id"],
                                 clusterid=cl["id"], tags="ssd", capacitybytes=100 * GIB)["storagepool"]
    api.createStoragePool(name="slow", url="nfs://10.0.0.1/slow", zoneid=zone["id"], podid=pod["id"],
                          clusterid=cl["id"], capacitybytes=100 * GIB)
    do = api.createDiskOffering(name="ssd5", disksize=5, tags="ssd")["diskoffering"]
    custom = api.createDiskOffering(name="custom", customized=True, displaytext="custom")["diskoffering"]
    so = api.createServiceOffering(name="small", cpunumber=1, cpuspeed=500, memory=256, displaytext="small")["serviceoffering"]
    return dict(api=api, zone=zone, host=host, pool=pool, do=do, custom=custom, so=so)


def test_create_volume_is_lazy_and_first_attach_places_it(dc):
    api = dc["api"]
    vol = api.createVolume(name="d1", zoneid=dc["zone"]["id"], diskofferingid=dc["do"]["id"])["volume"]
    assert vol["state"] == "Allocated" and "storageid" not in vol and vol["size"] == 5 * GIB
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=2,
                                  name="vm1")["virtualmachine"]
    assert vm["state"] == "Running" and vm["hostid"] == dc["host"]["id"]
    att = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert (att["state"], att["storageid"], att["deviceid"], att["virtualmachineid"]) == \
        ("Ready", dc["pool"]["id"], 1, vm["id"])       # the only pool carrying the offering's tag
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    assert root["state"] == "Ready" and root["size"] == 2 * GIB and root["deviceid"] == 0
    det = api.detachVolume(id=vol["id"])["volume"]
    assert "virtualmachineid" not in det and det["state"] == "Ready"


def test_attach_to_stopped_vm_keeps_volume_allocated_until_start(dc):
    api = dc["api"]
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=1,
                                  startvm=False)["virtualmachine"]
    assert vm["state"] == "Stopped"
    vol = api.createVolume(name="d2", zoneid=dc["zone"]["id"], diskofferingid=dc["custom"]["id"], size=3)["volume"]
    assert api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]["state"] == "Allocated"
    api.startVirtualMachine(id=vm["id"])
    vols = api.listVolumes(virtualmachineid=vm["id"])["volume"]
    assert {v["state"] for v in vols} == {"Ready"}


def test_no_suitable_pool_says_why_pool_by_pool(dc):
    api = dc["api"]
    big = api.createDiskOffering(name="huge", disksize=1000, tags="ssd")["diskoffering"]
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=1)["virtualmachine"]
    vol = api.createVolume(name="big", zoneid=dc["zone"]["id"], diskofferingid=big["id"])["volume"]
    with pytest.raises(CloudStackApiException) as e:
        api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    text = e.value.error["errortext"] if "errortext" in e.value.error else str(e.value.error)
    assert "fast: allocated" in text and "slow: tags" in text, text
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Allocated"


def test_attach_rules(dc):
    api = dc["api"]
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=1)["virtualmachine"]
    vol = api.createVolume(name="r", zoneid=dc["zone"]["id"], diskofferingid=dc["do"]["id"])["volume"]
    for dev in (0, 3):
        with pytest.raises(CloudStackApiException) as e:
            api.attachVolume(id=vol["id"], virtualmachineid=vm["id"], deviceid=dev)
        assert "not usable" in str(e.value.error)
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"], deviceid=5)
    other = api.createVolume(name="r2", zoneid=dc["zone"]["id"], diskofferingid=dc["do"]["id"])["volume"]
    with pytest.raises(CloudStackApiException) as e:
        api.attachVolume(id=other["id"], virtualmachineid=vm["id"], deviceid=5)
    assert "Device 5 is used" in str(e.value.error)
    with pytest.raises(CloudStackApiException) as e:
        api.deleteVolume(id=vol["id"])
    assert e.value.error["errorcode"] == 431 and "detach it first" in e.value.error["errortext"]


def test_resize_shrink_destroy_recover_delete(dc):
    api = dc["api"]
    vol = api.createVolume(name="rs", zoneid=dc["zone"]["id"], diskofferingid=dc["custom"]["id"], size=4)["volume"]
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=1)["virtualmachine"]
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    assert api.resizeVolume(id=vol["id"], size=6)["volume"]["size"] == 6 * GIB
    with pytest.raises(CloudStackApiException) as e:
        api.resizeVolume(id=vol["id"], size=2)
    assert "shrinkok" in str(e.value.error)
    assert api.resizeVolume(id=vol["id"], size=2, shrinkok=True)["volume"]["size"] == 2 * GIB
    api.detachVolume(id=vol["id"])
    assert api.destroyVolume(id=vol["id"])["volume"]["state"] == "Destroy"
    assert api.recoverVolume(id=vol["id"])["volume"]["state"] == "Ready"
    assert api.deleteVolume(id=vol["id"])["success"] is True
    assert api.listVolumes(id=vol["id"]) == {}


def test_destroying_a_vm_takes_its_root_and_keeps_data_disks(dc):
    api = dc["api"]
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=1,
                                  diskofferingid=dc["do"]["id"])["virtualmachine"]
    vols = {v["type"]: v for v in api.listVolumes(virtualmachineid=vm["id"])["volume"]}
    api.destroyVirtualMachine(id=vm["id"], expunge=True)
    assert api.listVolumes(id=vols["ROOT"]["id"]) == {}
    data = api.listVolumes(id=vols["DATADISK"]["id"])["volume"][0]
    assert data["state"] == "Ready" and "virtualmachineid" not in data


def test_pool_maintenance_stops_and_restarts_guests(dc):
    api = dc["api"]
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=1)["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    idle = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=1,
                                    startvm=False)["virtualmachine"]
    api.enableStorageMaintenance(id=root["storageid"])
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Stopped"
    with pytest.raises(CloudStackApiException) as e:      # not before the maintenance ends
        api.startVirtualMachine(id=vm["id"])
    assert e.value.error["errorcode"] == 431 and (f"its volume {root['name']} is on storage pool "
                                                  f"{root['storage']}, which is in Maintenance") in e.value.error["errortext"]
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Stopped"
    api.cancelStorageMaintenance(id=root["storageid"])
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Running"
    assert api.listVirtualMachines(id=idle["id"])["virtualmachine"][0]["state"] == "Stopped"


def test_volume_limit_is_enforced(server, dc):
    api = dc["api"]
    acc = api.createAccount(username="lim", password="pw", accounttype=0)["account"]
    api.updateResourceLimit(account="lim", domainid=acc["domainid"], resourcetype=2, max=1)
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    user = client(server, keys["apikey"], keys["secretkey"])
    user.createVolume(name="one", zoneid=dc["zone"]["id"], diskofferingid=dc["do"]["id"])
    with pytest.raises(CloudStackApiException) as e:
        user.createVolume(name="two", zoneid=dc["zone"]["id"], diskofferingid=dc["do"]["id"])
    assert e.value.error["errorcode"] == 535 and "Account Resource Limit = 1" in e.value.error["errortext"]
    assert [v["name"] for v in user.listVolumes()["volume"]] == ["one"]


def test_change_offering_moves_to_a_pool_with_the_new_tags(dc):
    api = dc["api"]
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=1)["virtualmachine"]
    plain = api.createDiskOffering(name="plain", disksize=5)["diskoffering"]
    vol = api.createVolume(name="co", zoneid=dc["zone"]["id"], diskofferingid=plain["id"])["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    api.detachVolume(id=vol["id"])
    if vol["storageid"] == dc["pool"]["id"]:       # make sure it sits on the untagged pool first
        slow = api.listStoragePools(name="slow")["storagepool"][0]
        api.migrateVolume(volumeid=vol["id"], storageid=slow["id"])
    with pytest.raises(CloudStackApiException) as e:
        api.changeOfferingForVolume(id=vol["id"], diskofferingid=dc["do"]["id"])
    assert "automigrate" in str(e.value.error)
    moved = api.changeOfferingForVolume(id=vol["id"], diskofferingid=dc["do"]["id"], automigrate=True)["volume"]
    assert moved["storageid"] == dc["pool"]["id"] and moved["diskofferingid"] == dc["do"]["id"]


def test_migrate_stopped_vm_storage_and_list_pools_for_migration(dc):
    api = dc["api"]
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=1)["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    other = next(p for p in api.listStoragePools()["storagepool"] if p["id"] != root["storageid"])
    found = {p["id"]: p["suitableformigration"] for p in api.findStoragePoolsForMigration(id=root["id"])["storagepool"]}
    assert found == {other["id"]: True}
    with pytest.raises(CloudStackApiException) as e:
        api.migrateVolume(volumeid=root["id"], storageid=other["id"])
    assert "livemigrate" in str(e.value.error)
    with pytest.raises(CloudStackApiException):
        api.migrateVirtualMachine(virtualmachineid=vm["id"], storageid=other["id"])
    api.stopVirtualMachine(id=vm["id"])
    api.migrateVirtualMachine(virtualmachineid=vm["id"], storageid=other["id"])
    assert api.listVolumes(id=root["id"])["volume"][0]["storageid"] == other["id"]
    assert api.startVirtualMachine(id=vm["id"])["virtualmachine"]["state"] == "Running"


def test_import_and_unmanage(dc):
    api = dc["api"]
    vm = api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=dc["so"]["id"], rootdisksize=1)["virtualmachine"]
    vol = api.createVolume(name="im", zoneid=dc["zone"]["id"], diskofferingid=dc["do"]["id"])["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    api.detachVolume(id=vol["id"])
    assert api.unmanageVolume(id=vol["id"])["success"] is True
    assert api.listVolumes(id=vol["id"]) == {}
    importable = api.listVolumesForImport(storageid=vol["storageid"])["volumeforimport"]
    assert [i["path"] for i in importable] == [vol["path"]]
    back = api.importVolume(storageid=vol["storageid"], path=vol["path"], name="again")["volume"]
    assert (back["state"], back["size"], back["storageid"]) == ("Ready", vol["size"], vol["storageid"])
    with pytest.raises(CloudStackApiException) as e:
        api.importVolume(storageid=vol["storageid"], path=vol["path"])
    assert "already managed" in str(e.value.error)
