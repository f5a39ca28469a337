"""Issue 5 through the API on a real one-node Ceph cluster (tests/cephcluster.py) and `volstack agent`
processes with real QEMU: seed 001's cloudmonkey sequence, bad input, the secret kept out of every
response and event, cold migration RBD → NFS → RBD with the bytes checked, heartbeats, overprovisioning."""
import hashlib
import json
import os
import time

import pytest
from cs import CloudStackApiException

from agentproc import AgentProcess, wait_until
from volstack.agent.rbd import RbdPool

GIB = 2 ** 30
MIB = 2 ** 20
pytestmark = pytest.mark.slow


@pytest.fixture
def short_osd_timeout(monkeypatch):
    """Agents started after this fail Ceph operations after 3 s instead of 30 (rados_osd_op_timeout)."""
    monkeypatch.setenv("VOLSTACK_RBD_OSD_OP_TIMEOUT", "3")


@pytest.fixture
def kvm(server, tmp_path, ceph):
    from support import add_datacenter, client, release_guests
    agents = [AgentProcess(tmp_path / f"agent{i}", name=f"rbdkvm{i}").start() for i in (1, 2)]
    api = client(server)
    dc = add_datacenter(api, "rz", "rp", "rc", agents)
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    hosts = dc["hosts"]
    so = api.createServiceOffering(name="tiny", cpunumber=1, cpuspeed=500, memory=128, rootdisksize=1,
                                   displaytext="tiny")["serviceoffering"]
    ctx = dict(api=api, zone=zone, pod=pod, cluster=cl, hosts=hosts, agents=agents, so=so, vms=[])
    yield ctx
    release_guests(api, ctx["vms"], agents)


def create_rbd_pool(kvm, ceph, name="MyCephCluster", **kw):
    """Seed 001: create storagepool scope=zone hypervisor=KVM provider=DefaultPrimary url=rbd://… tags=RBD"""
    args = dict(scope="zone", zoneid=kvm["zone"]["id"], hypervisor="KVM", name=name, provider="DefaultPrimary",
                url=ceph.rbd_url(), tags="RBD")
    args.update(kw)
    return kvm["api"].createStoragePool(**{k: v for k, v in args.items() if v is not None})["storagepool"]


def paused_vm(kvm):
    vm = kvm["api"].deployVirtualMachine(zoneid=kvm["zone"]["id"], serviceofferingid=kvm["so"]["id"],
                                         hostid=kvm["hosts"][0]["id"])["virtualmachine"]
    kvm["vms"].append(vm["id"])
    return vm


def no_secret(ceph, *objects):
    text = json.dumps(objects)
    ui_form = ceph.key.replace("+", "-").replace("/", "_")
    assert ceph.key not in text and ui_form not in text, "the cephx secret leaked"


def test_seed_001_sequence_creates_an_rbd_image_named_by_the_volume_path(kvm, ceph, tmp_path):
    api = kvm["api"]
    pool = create_rbd_pool(kvm, ceph)
    assert (pool["type"], pool["path"], pool["ipaddress"], pool["provider"]) == \
        ("RBD", ceph.pool, "127.0.0.1", "DefaultPrimary")
    assert pool["state"] == "Up" and pool["scope"] == "ZONE" and pool["tags"] == "RBD"
    assert pool["disksizetotal"] > 0, "capacity comes from Ceph"
    assert pool["storagecapabilities"]["native_snapshot"] == "true"
    listed = api.listStoragePools(id=pool["id"])["storagepool"]
    events = api.listEvents(listall=True)
    no_secret(ceph, pool, listed, events)
    for f in tmp_path.glob("volstack.db*"):
        assert ceph.key.encode() not in f.read_bytes(), "the secret is stored encrypted"
    off = api.createDiskOffering(name="5GB-Ceph", displaytext="5GB-Ceph", storagetype="shared",
                                 provisioningtype="thin", customized=False, disksize=5, tags="RBD")["diskoffering"]
    assert off["tags"] == "RBD"
    vol = api.createVolume(diskofferingid=off["id"], name="MyFirstCephDisk", zoneid=kvm["zone"]["id"])["volume"]
    assert vol["state"] == "Allocated" and vol["size"] == 5 * GIB
    vm = paused_vm(kvm)
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert vol["state"] == "Ready" and vol["storageid"] == pool["id"] and vol["path"] == vol["id"]
    info = ceph.image_info(vol["path"])
    assert info["size"] == 5 * GIB, "the image has the offering's size"
    pid = kvm["agents"][0].guest_pids()[0]
    assert ceph.key.encode() not in open(f"/proc/{pid}/cmdline", "rb").read()
    custom = api.createDiskOffering(name="c", displaytext="c", customized=True, tags="RBD")["diskoffering"]
    grow = api.createVolume(diskofferingid=custom["id"], name="grow", zoneid=kvm["zone"]["id"], size=1)["volume"]
    api.attachVolume(id=grow["id"], virtualmachineid=vm["id"])
    grown = api.resizeVolume(id=grow["id"], size=2)["volume"]
    assert grown["size"] == 2 * GIB and ceph.image_info(grow["id"])["size"] == 2 * GIB, \
        "resize grows the image under the running guest"
    no_secret(ceph, api.listVolumes(listall=True), api.listEvents(listall=True))


def test_bad_pools_are_refused_in_seconds_and_nothing_is_recorded(kvm, ceph):
    api = kvm["api"]
    bad_key = "AQAAAAAAAAAAABAA" + "B" * 22 + "=="
    cases = [
        (dict(url=ceph.rbd_url(key=bad_key)), "refused cephx user"),
        (dict(url=ceph.rbd_url(mon="127.0.0.1:9")), "no Ceph monitor answered|cannot connect"),
        (dict(url=ceph.rbd_url(pool="nosuchpool")), "does not exist"),
        (dict(url=f"rbd://{ceph.user}@{ceph.mon_host}/{ceph.pool}"), "needs the cephx user and its secret"),
        (dict(url=f"rbd://{ceph.user}:notakey@{ceph.mon_host}/{ceph.pool}"), "not a cephx key"),
        (dict(url=f"rbd://{ceph.user}:{ceph.key}@{ceph.mon_host}/"), "no valid Ceph pool"),
        (dict(hypervisor="Simulator"), "need hypervisor KVM"),
    ]
    for i, (kw, match) in enumerate(cases):
        started = time.monotonic()
        with pytest.raises(CloudStackApiException) as e:
            create_rbd_pool(kvm, ceph, name=f"bad{i}", **kw)
        took = time.monotonic() - started
        err = e.value.error
        assert err["errorcode"] in (431, 530, 534), err
        assert __import__("re").search(match, err["errortext"]), err["errortext"]
        assert took < 15, f"{kw}: {took:.1f} s"
        no_secret(ceph, err)
        assert bad_key not in json.dumps(err)
    assert api.listStoragePools().get("storagepool", []) == [], "nothing is recorded"
    assert not [e for e in api.listEvents(listall=True).get("event", []) if e["type"] == "STORAGE.POOL.CREATE"]


def test_url_safe_secret_several_monitors_and_cluster_scope(kvm, ceph):
    ui = ceph.key.replace("+", "-").replace("/", "_")
    url = f"rbd://{ceph.user}:{ui}@{ceph.mon_host.split(':')[0]},localhost:{ceph.mon_host.split(':')[1]}/{ceph.pool}"
    pool = create_rbd_pool(kvm, ceph, name="multi", url=url, scope="cluster", podid=kvm["pod"]["id"],
                           clusterid=kvm["cluster"]["id"], hypervisor=None)
    assert pool["scope"] == "CLUSTER" and pool["ipaddress"] == "127.0.0.1,localhost"
    no_secret(ceph, pool)
    api = kvm["api"]
    api.updateConfiguration(name="storage.overprovisioning.factor", value="0.5", storageid=pool["id"])
    listed = api.listStoragePools(id=pool["id"])["storagepool"][0]
    assert listed["overprovisionfactor"] == "0.5"
    assert listed["capacitytotal"] == listed["capacitybytes"] // 2, "a factor below 1 is accepted for RBD"


def test_cold_migration_rbd_to_nfs_and_back_keeps_the_bytes(kvm, ceph, nfs_pool):
    api = kvm["api"]
    rbd_pool = create_rbd_pool(kvm, ceph, name="ceph")
    nfs_url, nfs_dir = nfs_pool
    nfs = api.createStoragePool(name="nfs", url=nfs_url, zoneid=kvm["zone"]["id"], podid=kvm["pod"]["id"],
                                clusterid=kvm["cluster"]["id"], tags="NFS")["storagepool"]
    off = api.createDiskOffering(name="c", displaytext="c", customized=True, tags="RBD")["diskoffering"]
    vol = api.createVolume(diskofferingid=off["id"], name="m", zoneid=kvm["zone"]["id"], size=1)["volume"]
    vm = paused_vm(kvm)
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    api.detachVolume(id=vol["id"])
    spec = {"uuid": rbd_pool["id"], "type": "RBD", "path": ceph.pool, "monitors": [ceph.mon_host],
            "user": ceph.user, "key": ceph.key}
    data = os.urandom(MIB) * 3
    with RbdPool(spec, "test").image(vol["path"]) as img:
        img.write(data, 5 * MIB)
    moved = api.migrateVolume(volumeid=vol["id"], storageid=nfs["id"])["volume"]
    assert moved["storageid"] == nfs["id"] and (nfs_dir / moved["path"]).exists()
    assert vol["path"] not in ceph.images(), "the RBD copy is removed after the move"
    back = api.migrateVolume(volumeid=vol["id"], storageid=rbd_pool["id"])["volume"]
    assert back["storageid"] == rbd_pool["id"] and back["state"] == "Ready"
    assert not (nfs_dir / back["path"]).exists()
    with RbdPool(spec, "test").image(back["path"], read_only=True) as img:
        assert hashlib.sha256(img.read(5 * MIB, 3 * MIB)).digest() == hashlib.sha256(data).digest()
        assert img.size() == GIB
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])       # raw on RBD again: QEMU opens it


def test_heartbeats_tell_a_live_host_from_a_dead_one(kvm, ceph):
    api = kvm["api"]
    pool = create_rbd_pool(kvm, ceph, name="hb", **{"details[0].heartbeatinterval": "1"})

    def beats():
        api.syncStoragePool(id=pool["id"])
        details = api.listStoragePools(id=pool["id"])["storagepool"][0]["details"]
        return {k.removeprefix("heartbeat."): v for k, v in details.items() if k.startswith("heartbeat.")}
    wait_until("both hosts alive", lambda: (b := beats()) and all(b.get(f"rbdkvm{i}", "").startswith("Alive")
                                                                   for i in (1, 2)), timeout=30, interval=0.5)
    kvm["agents"][1].stop()
    wait_until("the stopped host shown dead", lambda: beats().get("rbdkvm2", "").startswith("Dead"),
               timeout=30, interval=0.5)
    assert beats()["rbdkvm1"].startswith("Alive")


def test_browse_import_unmanage_and_delete_safety(kvm, ceph):
    api = kvm["api"]
    pool = create_rbd_pool(kvm, ceph, name="browse")
    off = api.createDiskOffering(name="c", displaytext="c", customized=True, tags="RBD")["diskoffering"]
    vol = api.createVolume(diskofferingid=off["id"], name="owned", zoneid=kvm["zone"]["id"], size=1)["volume"]
    vm = paused_vm(kvm)
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    ceph.rbd("create", "--size", "64M", f"{ceph.pool}/foreign-image")
    objects = {o["name"]: o for o in api.listStoragePoolObjects(id=pool["id"])["datastoreobject"]}
    assert objects[vol["path"]]["volumeid"] == vol["id"] and objects[vol["path"]]["format"].lower() == "raw"
    assert "volumeid" not in objects["foreign-image"]
    listed = api.listVolumesForImport(storageid=pool["id"])
    assert "foreign-image" in json.dumps(listed) and vol["path"] not in json.dumps(listed)
    imported = api.importVolume(storageid=pool["id"], path="foreign-image", name="imp")["volume"]
    assert imported["state"] == "Ready" and imported["size"] == 64 * MIB and imported["storageid"] == pool["id"]
    with pytest.raises(CloudStackApiException) as e:
        api.importVolume(storageid=pool["id"], path="../etc", name="bad")
    assert e.value.error["errorcode"] == 431
    api.unmanageVolume(id=imported["id"])
    assert "foreign-image" in ceph.images(), "unmanage keeps the image"
    with pytest.raises(CloudStackApiException) as e:
        api.deleteStoragePool(id=pool["id"])
    assert e.value.error["errorcode"] == 536 and "still live" in e.value.error["errortext"]
    api.detachVolume(id=vol["id"])
    api.deleteVolume(id=vol["id"])
    assert vol["path"] not in ceph.images()
    api.destroyVirtualMachine(id=vm["id"], expunge=True)
    kvm["vms"].remove(vm["id"])
    api.deleteStoragePool(id=pool["id"])
    assert api.listStoragePools().get("storagepool", []) == []


def test_maintenance_stops_and_restarts_the_guests_on_the_pool(kvm, ceph):
    api = kvm["api"]
    pool = create_rbd_pool(kvm, ceph, name="maint")
    vm = paused_vm(kvm)                     # its ROOT volume is on the RBD pool, the only one
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    assert root["storageid"] == pool["id"] and root["path"] in ceph.images()
    assert api.enableStorageMaintenance(id=pool["id"])["storagepool"]["state"] == "Maintenance"
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Stopped"
    assert api.cancelStorageMaintenance(id=pool["id"])["storagepool"]["state"] == "Up"
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Running"


def test_a_frozen_cluster_leaves_the_volume_stable_with_the_reason(short_osd_timeout, kvm, ceph):
    import signal
    api = kvm["api"]
    create_rbd_pool(kvm, ceph, name="frozen")
    vm = paused_vm(kvm)
    off = api.createDiskOffering(name="c", displaytext="c", customized=True, tags="RBD")["diskoffering"]
    vol = api.createVolume(diskofferingid=off["id"], name="f", zoneid=kvm["zone"]["id"], size=1)["volume"]
    osd = int(ceph.env["CEPH_OSD_PID"])
    os.kill(osd, signal.SIGSTOP)
    try:
        with pytest.raises(CloudStackApiException) as e:
            api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    finally:
        os.kill(osd, signal.SIGCONT)
    assert "did not answer" in e.value.error["errortext"]
    after = api.listVolumes(id=vol["id"])["volume"][0]
    assert after["state"] == "Allocated" and "creating the image" in after["status"]
    assert api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]["state"] == "Ready"


def test_root_volumes_from_a_template_are_clones_of_its_protected_base_snapshot(kvm, ceph, server, tmp_path):
    """Seed 001 part 3: the template is copied once into the pool, snapshotted and protected, and ROOT
    volumes are clones whose parent is that snapshot; the base goes once no clone needs it."""
    from volstack.services import template_cache
    from volstack.services.context import system_context
    api = kvm["api"]
    (tmp_path / "store").mkdir()
    api.addImageStore(name="store", provider="Filesystem", url=f"file://{tmp_path / 'store'}",
                      zoneid=kvm["zone"]["id"])
    pool = create_rbd_pool(kvm, ceph, name="tmpl")
    src = paused_vm(kvm)
    root = api.listVolumes(virtualmachineid=src["id"], type="ROOT")["volume"][0]
    api.stopVirtualMachine(id=src["id"])
    spec = {"uuid": pool["id"], "type": "RBD", "path": ceph.pool, "monitors": [ceph.mon_host], "user": ceph.user,
            "key": ceph.key}
    with RbdPool(spec, "test").image(root["path"]) as img:
        img.write(b"\x5a" * (2 * MIB), MIB)
    ostype = api.listOsTypes(description="Debian GNU/Linux 12")["ostype"][0]["id"]
    t = api.createTemplate(name="golden", displaytext="golden", volumeid=root["id"], ostypeid=ostype)["template"]
    vms = [api.deployVirtualMachine(zoneid=kvm["zone"]["id"], serviceofferingid=kvm["so"]["id"], templateid=t["id"],
                                    hostid=kvm["hosts"][0]["id"])["virtualmachine"] for _ in range(2)]
    kvm["vms"] += [v["id"] for v in vms]
    base = f"tmpl-{t['id']}"
    assert base in ceph.images(), "the template was imported once into a base image"
    snaps = json.loads(ceph.rbd("snap", "ls", "--format", "json", f"{ceph.pool}/{base}"))
    assert [s["name"] for s in snaps] == ["volstack-base"]
    assert json.loads(ceph.rbd("info", "--format", "json", f"{ceph.pool}/{base}@volstack-base"))["protected"] == "true"
    for vm in vms:
        vol = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
        parent = ceph.image_info(vol["path"])["parent"]
        assert (parent["image"], parent["snapshot"]) == (base, "volstack-base")
        with RbdPool(spec, "test").image(vol["path"], read_only=True) as img:
            assert img.read(MIB, 2 * MIB) == b"\x5a" * (2 * MIB), "the clone shows the template's data"
    api.deleteTemplate(id=t["id"], forced=True)
    assert template_cache.cleanup(server.db, system_context()) == 0, "clones still need the base"
    for vm in vms:
        api.destroyVirtualMachine(id=vm["id"], expunge=True)
        kvm["vms"].remove(vm["id"])
    assert template_cache.cleanup(server.db, system_context()) == 1
    assert base not in ceph.images(), "the base goes once no clone needs it"


def test_direct_download_template_lands_in_an_rbd_base_image_and_roots_are_its_clones(kvm, ceph, tmp_path):
    """Issue 5 item 3: a directdownload template deployed on an RBD pool is fetched by the host straight into a
    base image (no image store), which gets the protected base snapshot ROOT volumes are cloned from; when the
    source changes the next deploy fetches a new base and older clones keep theirs."""
    from httpserver import FileServer
    from test_templates import allow_loopback, qemu_bytes
    api = kvm["api"]
    allow_loopback(api)
    pool = create_rbd_pool(kvm, ceph, name="dd")
    spec = ceph.spec(uuid=pool["id"])
    with FileServer() as web:
        url = web.add("/dd.qcow2", data=qemu_bytes(tmp_path, "dd.qcow2", 2, fill=0x71))
        t = api.registerTemplate(name="dd", url=url, format="QCOW2", hypervisor="KVM", zoneid=kvm["zone"]["id"],
                                 directdownload=True)["template"][0]
        vms = [api.deployVirtualMachine(zoneid=kvm["zone"]["id"], serviceofferingid=kvm["so"]["id"],
                                        templateid=t["id"], hostid=kvm["hosts"][0]["id"])["virtualmachine"]
               for _ in range(2)]
        kvm["vms"] += [v["id"] for v in vms]
        assert len([r for r in web.requests if r[0] == "GET"]) == 1, "fetched once for both deploys"
        base = f"tmpl-{t['id']}"
        assert ceph.image_info(base)["size"] == GIB
        snaps = json.loads(ceph.rbd("snap", "ls", "--format", "json", f"{ceph.pool}/{base}"))
        assert [s["name"] for s in snaps] == ["volstack-base"]
        assert json.loads(ceph.rbd("info", "--format", "json", f"{ceph.pool}/{base}@volstack-base"))["protected"] \
            == "true"
        for vm in vms:
            root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
            assert root["storageid"] == pool["id"]
            parent = ceph.image_info(root["path"])["parent"]
            assert (parent["image"], parent["snapshot"]) == (base, "volstack-base")
            with RbdPool(spec, "test").image(root["path"], read_only=True) as img:
                assert img.read(0, 2 * MIB) == b"\x71" * (2 * MIB)
        web.add("/dd.qcow2", data=qemu_bytes(tmp_path, "dd2.qcow2", 1, fill=0x72))
        vm = api.deployVirtualMachine(zoneid=kvm["zone"]["id"], serviceofferingid=kvm["so"]["id"], templateid=t["id"],
                                      hostid=kvm["hosts"][0]["id"])["virtualmachine"]
        kvm["vms"].append(vm["id"])
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    assert ceph.image_info(root["path"])["parent"]["image"] == f"{base}-1", "the changed source is a new base"
    with RbdPool(spec, "test").image(root["path"], read_only=True) as img:
        assert img.read(0, MIB) == b"\x72" * MIB
    old = api.listVolumes(virtualmachineid=vms[0]["id"], type="ROOT")["volume"][0]
    assert ceph.image_info(old["path"])["parent"]["image"] == base, "older clones keep their base"
    assert not [i for i in ceph.images() if i.startswith(".")], "no half-made image is left"
    work = list((tmp_path / "agent1").glob("downloads/*.image")) + list((tmp_path / "agent1").glob("downloads/*.download"))
    assert work == [], "the staging files are gone"


def test_heartbeat_resumes_after_an_agent_restart_at_the_next_host_check(kvm, ceph, server):
    """A restarted agent keeps no pool secrets: the management server notices the new boot id at its next host
    check and connects the host's RBD pools again, so the host beats without waiting for pool statistics."""
    import signal

    from volstack.services import agents
    from volstack.services.context import system_context
    api = kvm["api"]
    pool = create_rbd_pool(kvm, ceph, name="hb2", **{"details[0].heartbeatinterval": "1"})
    spec = ceph.spec(uuid=pool["id"])
    first = kvm["agents"][0].client
    beats = lambda: first.call("rbd_heartbeats", pool=spec)["hosts"]   # noqa: E731
    wait_until("both hosts beat", lambda: {"rbdkvm1", "rbdkvm2"} <= set(beats()), timeout=30)
    kvm["agents"][1].restart(signal.SIGKILL, keep_port=True)
    restarted = time.time()
    agents.check_hosts(server.db, system_context())
    wait_until("the restarted host beats again", lambda: beats()["rbdkvm2"]["time"] > restarted, timeout=15)
    reconnects = api.listEvents(type="HOST.RECONNECT", listall=True)["event"]
    assert any("rbdkvm2 restarted" in e["description"] and "hb2" in e["description"] for e in reconnects)
    agents.check_hosts(server.db, system_context())          # same boot id: nothing is reconnected again
    assert len(api.listEvents(type="HOST.RECONNECT", listall=True)["event"]) == len(reconnects)
