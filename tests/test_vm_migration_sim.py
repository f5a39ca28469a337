"""Live migration of running VMs between Simulator hosts: shared disks stay, local disks pin, failures
leave the VM running on its source with the reason."""
import pytest
from cs import CloudStackApiException

from agentproc import wait_until
from support import add_datacenter, client

GIB = 2 ** 30


@pytest.fixture
def two(server):
    api = client(server)
    dc = add_datacenter(api, "mz", "mp", "mc", [f"http://simm{i}" for i in (1, 2)])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    hosts = dc["hosts"]
    shared = api.createStoragePool(name="shared", url="nfs://10.0.0.9/shared", zoneid=zone["id"], podid=pod["id"],
                                   clusterid=cl["id"], capacitybytes=100 * GIB)["storagepool"]
    local = api.createStoragePool(name="local1", url="file://localhost/var/local1", zoneid=zone["id"], scope="host",
                                  hostid=hosts[0]["id"])["storagepool"]
    so = api.createServiceOffering(name="m", cpunumber=1, cpuspeed=500, memory=256, displaytext="m")["serviceoffering"]
    local_do = api.createDiskOffering(name="loc", disksize=1, storagetype="local")["diskoffering"]
    vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"], rootdisksize=1,
                                  hostid=hosts[0]["id"])["virtualmachine"]
    return dict(api=api, zone=zone, hosts=hosts, shared=shared, local=local, so=so, local_do=local_do, vm=vm)


def test_running_vm_moves_to_the_other_host_with_its_disks_in_place(two, server):
    api, vm, hosts = two["api"], two["vm"], two["hosts"]
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    moved = api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=hosts[1]["id"])["virtualmachine"]
    assert (moved["state"], moved["hostid"]) == ("Running", hosts[1]["id"])
    assert api.listVolumes(id=root["id"])["volume"][0]["storageid"] == root["storageid"] == two["shared"]["id"]
    from volstack.drivers.hosts import SimulatedHost
    assert vm["id"] not in SimulatedHost(hosts[0]["id"]).state["vms"]
    assert SimulatedHost(hosts[1]["id"]).state["vms"][vm["id"]]["state"] == "Running"
    # without a host, one that reaches every disk is picked: back to the first
    back = api.migrateVirtualMachine(virtualmachineid=vm["id"])["virtualmachine"]
    assert back["hostid"] == hosts[0]["id"]
    events = [e["description"] for e in api.listEvents(type="VM.MIGRATE")["event"]]
    assert any("live-migrated from host" in d for d in events)


def test_local_volumes_pin_the_vm_unless_moved_with_it(two):
    api, vm, hosts = two["api"], two["vm"], two["hosts"]
    vol = api.createVolume(name="l", zoneid=two["zone"]["id"], diskofferingid=two["local_do"]["id"])["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert vol["storageid"] == two["local"]["id"]
    with pytest.raises(CloudStackApiException) as e:
        api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=hosts[1]["id"])
    assert e.value.error["errorcode"] == 431 and "pins the VM" in e.value.error["errortext"]
    with pytest.raises(CloudStackApiException) as e:          # and no host is suitable when choosing
        api.migrateVirtualMachine(virtualmachineid=vm["id"])
    assert e.value.error["errorcode"] == 533
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Running"
    # a stopped VM stays pinned too: it starts only on the host of its local pool
    api.stopVirtualMachine(id=vm["id"])
    with pytest.raises(CloudStackApiException) as e:
        api.startVirtualMachine(id=vm["id"], hostid=hosts[1]["id"])
    assert e.value.error["errorcode"] == 533 and "pin" in e.value.error["errortext"]
    assert api.startVirtualMachine(id=vm["id"])["virtualmachine"]["hostid"] == hosts[0]["id"]
    moved = api.migrateVirtualMachineWithVolume(virtualmachineid=vm["id"], hostid=hosts[1]["id"], **{
        "migrateto[0].volume": vol["id"], "migrateto[0].pool": two["shared"]["id"]})["virtualmachine"]
    assert (moved["state"], moved["hostid"]) == ("Running", hosts[1]["id"])
    assert api.listVolumes(id=vol["id"])["volume"][0]["storageid"] == two["shared"]["id"]


def test_moving_a_volume_onto_local_storage_of_the_destination_is_refused(two):
    api, vm, hosts = two["api"], two["vm"], two["hosts"]
    local2 = api.createStoragePool(name="local2", url="file://localhost/var/local2", zoneid=two["zone"]["id"],
                                   scope="host", hostid=hosts[1]["id"])["storagepool"]
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    with pytest.raises(CloudStackApiException) as e:
        api.migrateVirtualMachineWithVolume(virtualmachineid=vm["id"], hostid=hosts[1]["id"], **{
            "migrateto[0].volume": root["id"], "migrateto[0].pool": local2["id"]})
    assert e.value.error["errorcode"] == 431 and "pick a shared pool" in e.value.error["errortext"]
    assert api.listVolumes(id=root["id"])["volume"][0]["storageid"] == two["shared"]["id"]


def test_a_stopped_vm_moves_no_volume_when_one_of_them_is_refused(two):
    api, vm = two["api"], two["vm"]
    tiny = api.createStoragePool(name="tiny", url="nfs://10.0.0.9/tiny", zoneid=two["zone"]["id"],
                                 scope="zone", hypervisor="Simulator", capacitybytes=2 ** 20)["storagepool"]
    data = api.createVolume(name="d", zoneid=two["zone"]["id"], diskofferingid=two["local_do"]["id"])["volume"]
    data = api.attachVolume(id=data["id"], virtualmachineid=vm["id"])["volume"]
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    api.stopVirtualMachine(id=vm["id"])
    with pytest.raises(CloudStackApiException) as e:     # the root could move; the data disk cannot fit
        api.migrateVirtualMachineWithVolume(virtualmachineid=vm["id"], **{
            "migrateto[0].volume": root["id"], "migrateto[0].pool": two["local"]["id"],
            "migrateto[1].volume": data["id"], "migrateto[1].pool": tiny["id"]})
    assert e.value.error["errorcode"] == 533 and "tiny" in e.value.error["errortext"]
    for vol, pool in ((root, two["shared"]), (data, two["local"])):
        now = api.listVolumes(id=vol["id"])["volume"][0]
        assert (now["storageid"], now["state"]) == (pool["id"], "Ready"), "nothing moved"
    assert api.startVirtualMachine(id=vm["id"])["virtualmachine"]["state"] == "Running"


def test_a_failed_migration_leaves_the_vm_running_on_its_source_with_the_reason(two):
    api, vm, hosts = two["api"], two["vm"], two["hosts"]
    from volstack.drivers.hosts import SimulatedHost
    SimulatedHost(hosts[0]["id"]).state["fail"] = {"vm_migrate": "connection to the destination reset"}
    try:
        with pytest.raises(CloudStackApiException) as e:
            api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=hosts[1]["id"])
    finally:
        SimulatedHost(hosts[0]["id"]).state.pop("fail")
    assert "keeps running on" in e.value.error["errortext"] and "connection to the destination reset" in \
        e.value.error["errortext"]
    after = api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]
    assert (after["state"], after["hostid"]) == ("Running", hosts[0]["id"])
    assert vm["id"] not in SimulatedHost(hosts[1]["id"]).state["vms"], "the incoming copy was dropped"
    errors = [e["description"] for e in api.listEvents(type="VM.MIGRATE", level="ERROR")["event"]]
    assert any("connection to the destination reset" in d for d in errors)
    # the same request succeeds once the cause is gone
    assert api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=hosts[1]["id"])["virtualmachine"]["hostid"] \
        == hosts[1]["id"]


def test_a_host_that_is_not_up_and_enabled_is_refused(two):
    api, vm, hosts = two["api"], two["vm"], two["hosts"]
    api.updateHost(id=hosts[1]["id"], allocationstate="Disable")
    with pytest.raises(CloudStackApiException) as e:
        api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=hosts[1]["id"])
    assert e.value.error["errorcode"] == 534 and "Enabled" in e.value.error["errortext"]


@pytest.mark.parametrize("finish_fails", [False, True])
def test_a_migration_interrupted_with_its_management_server_is_settled_from_the_hosts(two, server, finish_fails):
    """The job died after the destination was prepared: the hosts say where the guest can run."""
    api, vm, hosts = two["api"], two["vm"], two["hosts"]
    from sqlalchemy import update

    from volstack.db.storage_models import VirtualMachine
    from volstack.drivers.hosts import SimulatedHost
    from volstack.services import vms
    from volstack.services.context import system_context
    src, dst = SimulatedHost(hosts[0]["id"]), SimulatedHost(hosts[1]["id"])
    dst.call("vm_migrate_prepare", vm=src.call("vm_migrate_spec", name=vm["id"])["spec"], address="simm2")
    with server.db.session() as s:
        s.execute(update(VirtualMachine).where(VirtualMachine.uuid == vm["id"])
                  .values(state="Migrating", details={"migrating_to": hosts[1]["id"]}))
    if finish_fails:
        dst.state["fail"] = {"vm_migrate_finish": "the incoming migration failed"}
    try:
        vms.settle_interrupted(server.db, system_context(), vm["id"], "migrateVirtualMachine")
    finally:
        dst.state.pop("fail", None)
    after = api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]
    expected = hosts[0] if finish_fails else hosts[1]
    assert (after["state"], after["hostid"]) == ("Running", expected["id"])
    assert (vm["id"] in src.state["vms"], vm["id"] in dst.state["vms"]) == (finish_fails, not finish_fails)
    assert any("interrupted" in e["description"] for e in api.listEvents(type="VM.RECOVER")["event"])


def test_find_hosts_for_migration_says_why_a_host_is_unsuitable(two):
    api, vm, hosts = two["api"], two["vm"], two["hosts"]
    found = api.findHostsForMigration(virtualmachineid=vm["id"])["host"]
    assert [(h["id"], h["suitableformigration"]) for h in found] == [(hosts[1]["id"], True)]
    vol = api.createVolume(name="l2", zoneid=two["zone"]["id"], diskofferingid=two["local_do"]["id"])["volume"]
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    found = api.findHostsForMigration(virtualmachineid=vm["id"])["host"][0]
    assert found["suitableformigration"] is False and "pins the VM" in found["notsuitablereason"]


def test_an_attached_iso_travels_from_its_copy_on_the_shared_pool(two, tmp_path):
    from volstack.drivers.hosts import SimulatedHost
    api, vm, hosts = two["api"], two["vm"], two["hosts"]
    api.addImageStore(name="s", provider="Filesystem", url=f"file://{tmp_path}", zoneid=two["zone"]["id"])
    api.updateConfiguration(name="secstorage.allowed.internal.sites", value="127.0.0.1/32")
    iso = api.registerIso(name="iso", url="http://127.0.0.1/x.iso", zoneid=two["zone"]["id"])["iso"][0]
    # the simulated download finishes at once, but in its own background job: wait for it
    wait_until("the ISO to be ready", lambda: api.listIsos(id=iso["id"], isofilter="all")["iso"][0]["isready"])
    api.attachIso(id=iso["id"], virtualmachineid=vm["id"])
    assert SimulatedHost(hosts[0]["id"]).state["vms"][vm["id"]]["cdrom"] == f"tmpl-{iso['id']}"
    assert f"tmpl-{iso['id']}" in SimulatedHost(hosts[0]["id"]).state["pools"][two["shared"]["id"]]
    moved = api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=hosts[1]["id"])["virtualmachine"]
    assert moved["isoid"] == iso["id"]
    assert SimulatedHost(hosts[1]["id"]).state["vms"][vm["id"]]["cdrom"] == f"tmpl-{iso['id']}"
