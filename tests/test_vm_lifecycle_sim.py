"""VM lifecycle on Simulator hosts: the expunge sweep, service offering changes and the root-disk-size
table of seed 004, QoS re-applied online, volatile offerings."""
import pytest
from cs import CloudStackApiException

from agentproc import wait_until
from support import add_datacenter, client

GIB = 2 ** 30


@pytest.fixture
def dc(server):
    api = client(server)
    dc = add_datacenter(api, "lz", "lp", "lc", ["http://siml"])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    host = dc["host"]
    pool = api.createStoragePool(name="p", url="nfs://10.0.0.3/p", zoneid=zone["id"], podid=pod["id"],
                                 clusterid=cl["id"], capacitybytes=100 * GIB)["storagepool"]

    def so(name, root=None, **kw):
        args = dict(name=name, cpunumber=1, cpuspeed=500, memory=256, displaytext=name, **kw)
        if root is not None:
            args["rootdisksize"] = root
        return api.createServiceOffering(**args)["serviceoffering"]
    return dict(api=api, zone=zone, host=host, pool=pool, so=so)


def deploy(dc, offering, **kw):
    return dc["api"].deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=offering["id"], **kw)["virtualmachine"]


def root_of(api, vm):
    return api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]


def test_destroyed_vms_are_expunged_by_the_sweep_after_the_delay(dc, server):
    api = dc["api"]
    small = dc["so"]("s", 1)
    gone, kept = deploy(dc, small), deploy(dc, small)
    root = root_of(api, gone)
    api.updateConfiguration(name="expunge.delay", value="3600")
    api.updateConfiguration(name="expunge.interval", value="1")
    for vm in (gone, kept):
        assert api.destroyVirtualMachine(id=vm["id"])["virtualmachine"]["state"] == "Destroyed"
    from volstack.services import vms
    from volstack.services.context import system_context
    assert vms.expunge_destroyed(server.db, system_context()) == 0, "not before expunge.delay"
    assert api.recoverVirtualMachine(id=kept["id"])["virtualmachine"]["state"] == "Stopped"
    api.updateConfiguration(name="expunge.delay", value="0")
    wait_until("the expunge sweep", lambda: api.listVirtualMachines(id=gone["id"]) == {}, timeout=30)
    assert api.listVolumes(id=root["id"]) == {}, "the ROOT volume went with the VM"
    assert api.listVirtualMachines(id=kept["id"])["virtualmachine"][0]["state"] == "Stopped", "recovered: kept"
    assert any("expunged" in e["description"] for e in api.listEvents(type="VM.EXPUNGE")["event"])


def test_service_offering_root_disk_size_table(dc):
    """Seed 004: 0 -> any yes; 5 -> 5 yes; 5 -> 10 yes (grown); 10 -> 5 no; any -> 0 yes (size kept)."""
    api, so = dc["api"], dc["so"]
    zero, five, five_b, ten = so("zero"), so("five", 5), so("five-b", 5), so("ten", 10)
    vm = deploy(dc, zero, rootdisksize=2, startvm=False)
    change = api.changeServiceForVirtualMachine
    assert change(id=vm["id"], serviceofferingid=five["id"])["virtualmachine"]["serviceofferingid"] == five["id"]  # row 1
    assert root_of(api, vm)["size"] == 5 * GIB
    change(id=vm["id"], serviceofferingid=five_b["id"])                                                        # row 2
    assert root_of(api, vm)["size"] == 5 * GIB
    change(id=vm["id"], serviceofferingid=ten["id"])                                                           # row 3
    assert root_of(api, vm)["size"] == 10 * GIB
    with pytest.raises(CloudStackApiException) as e:                                                            # row 4
        change(id=vm["id"], serviceofferingid=five["id"])
    assert e.value.error["errorcode"] == 431 and "never shrinks the root disk" in e.value.error["errortext"]
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["serviceofferingid"] == ten["id"]
    change(id=vm["id"], serviceofferingid=zero["id"])                                                          # row 5
    assert root_of(api, vm)["size"] == 10 * GIB, "0 does not enforce a size: the root disk keeps its size"
    # with a 0 GB offering the root volume can be resized again, but not shrunk below it by an offering
    api.resizeVolume(id=root_of(api, vm)["id"], size=12)
    with pytest.raises(CloudStackApiException) as e:
        change(id=vm["id"], serviceofferingid=ten["id"])
    assert "the root volume is 12 GB" in e.value.error["errortext"]


def test_running_vms_change_offering_only_by_scaling_the_storage_side(dc):
    api, so = dc["api"], dc["so"]
    plain = so("plain", 1)
    fast = so("fast", 2, bytesreadrate=8 * 2 ** 20, iopswriterate=300)
    bigger = api.createServiceOffering(name="big", cpunumber=2, cpuspeed=500, memory=512, displaytext="big",
                                       rootdisksize=2)["serviceoffering"]
    vm = deploy(dc, plain)
    with pytest.raises(CloudStackApiException) as e:
        api.changeServiceForVirtualMachine(id=vm["id"], serviceofferingid=fast["id"])
    assert "stop it" in e.value.error["errortext"] and "scaleVirtualMachine" in e.value.error["errortext"]
    with pytest.raises(CloudStackApiException) as e:
        api.scaleVirtualMachine(id=vm["id"], serviceofferingid=bigger["id"])
    assert "does not hot-plug CPUs or memory" in e.value.error["errortext"]
    scaled = api.scaleVirtualMachine(id=vm["id"], serviceofferingid=fast["id"])["virtualmachine"]
    assert (scaled["state"], scaled["serviceofferingid"]) == ("Running", fast["id"])
    assert root_of(api, vm)["size"] == 2 * GIB, "grown online"
    from volstack.drivers.hosts import SimulatedHost
    calls = SimulatedHost(dc["host"]["id"]).state.setdefault("qos", {})
    serial = root_of(api, vm)["id"].replace("-", "")[:20]
    applied = {k: v for k, v in calls[(vm["id"], serial)].items() if v}
    assert applied == {"bps_rd": 8 * 2 ** 20, "iops_wr": 300}, "the new QoS was applied online"
    api.stopVirtualMachine(id=vm["id"])
    assert api.changeServiceForVirtualMachine(id=vm["id"], serviceofferingid=bigger["id"])["virtualmachine"][
        "serviceofferingid"] == bigger["id"]


def test_volatile_offering_gives_a_fresh_root_disk_on_reboot(dc):
    api = dc["api"]
    volatile = dc["so"]("vol", 1, isvolatile=True)
    vm = deploy(dc, volatile)
    from volstack.drivers.hosts import SimulatedHost
    images = SimulatedHost(dc["host"]["id"]).state["pools"][dc["pool"]["id"]]
    root = root_of(api, vm)
    images[root["path"]] = 123            # the guest "wrote" into its root disk
    assert api.rebootVirtualMachine(id=vm["id"])["virtualmachine"]["state"] == "Running"
    assert images[root["path"]] == 1 * GIB, "the root image was made anew"
    assert any("fresh root disk" in e["description"] for e in api.listEvents(type="VM.REBOOT")["event"])


def test_a_new_offering_with_other_storage_tags_moves_the_root_volume_only_with_automigrate(dc):
    api = dc["api"]
    vm = deploy(dc, dc["so"]("plain2", 1), startvm=False)
    api.startVirtualMachine(id=vm["id"])
    api.stopVirtualMachine(id=vm["id"])
    # added after the root volume is placed: an untagged offering may use a tagged pool too
    gold_pool = api.createStoragePool(name="gold", url="nfs://10.0.0.3/gold", zoneid=dc["zone"]["id"],
                                      clusterid=api.listClusters()["cluster"][0]["id"],
                                      podid=api.listPods()["pod"][0]["id"], tags="gold")["storagepool"]
    assert root_of(api, vm)["storageid"] == dc["pool"]["id"]
    gold = dc["so"]("gold", 1, tags="gold")
    with pytest.raises(CloudStackApiException) as e:
        api.changeServiceForVirtualMachine(id=vm["id"], serviceofferingid=gold["id"])
    assert "automigrate=true" in e.value.error["errortext"]
    api.changeServiceForVirtualMachine(id=vm["id"], serviceofferingid=gold["id"], automigrate=True)
    assert root_of(api, vm)["storageid"] == gold_pool["id"]
