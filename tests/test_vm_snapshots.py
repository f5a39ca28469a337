"""VM snapshots: CloudStack's rules through the API on in-memory Simulator hosts, the tree of snapshots on a real
agent (simulated guests, real qcow2 images), and real QEMU guests (slow): a disk-only snapshot of all disks taken
while the guest writes, a memory snapshot the running guest goes back to, and deleting a middle snapshot."""
import json
import subprocess

import pytest
from sqlalchemy import select

from support import add_datacenter, client
from test_templates import add_store, cloud, error_of, img_info, qemu_io  # noqa: F401  (cloud is a fixture)
from test_volumes_sim import dc  # noqa: F401  (a fixture: a zone of in-memory Simulator hosts)
from volstack.db.snapshot_models import Snapshot
from volstack.db.vm_snapshot_models import VMSnapshot
from volstack.drivers.hosts import SimulatedHost

GIB = 2 ** 30


def _vm_with_data(api, zone, so, offering, name="vm1"):
    vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"], rootdisksize=1,
                                  name=name)["virtualmachine"]
    vol = api.createVolume(name=f"{name}-data", zoneid=zone["id"], diskofferingid=offering["id"], size=1)["volume"]
    return vm, api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]


def _snaps(api, vm):
    return {x["displayname"]: x for x in api.listVMSnapshot(virtualmachineid=vm["id"]).get("vmSnapshot", [])}


@pytest.mark.usefixtures("db_url")       # on SQLite and PostgreSQL
def test_vm_snapshot_rules_tree_and_expunge_on_simulator_hosts(dc, server):
    api, zone = dc["api"], dc["zone"]
    vm, data = _vm_with_data(api, zone, dc["so"], dc["custom"])
    spare = api.createVolume(name="spare", zoneid=zone["id"], diskofferingid=dc["custom"]["id"], size=1)["volume"]

    s1 = api.createVMSnapshot(virtualmachineid=vm["id"], name="s1", description="first")["vmsnapshot"]
    assert (s1["state"], s1["type"], s1["current"], s1["virtualmachineid"], s1["displayname"], s1["description"]) \
        == ("Ready", "Disk", True, vm["id"], "s1", "first")
    assert s1["name"].startswith(f"{vm['name']}_VS_") and "parent" not in s1
    code, text = error_of(lambda: api.createVMSnapshot(virtualmachineid=vm["id"], name="s1"))
    assert code == 431 and "already has a VM snapshot named s1" in text
    code, text = error_of(lambda: api.createVMSnapshot(virtualmachineid=vm["id"], name="q", quiescevm=True))
    assert code == 431 and "guest agent" in text
    s2 = api.createVMSnapshot(virtualmachineid=vm["id"], name="s2", snapshotmemory=True)["vmsnapshot"]
    assert (s2["type"], s2["current"], s2["parent"], s2["parentName"]) == ("DiskAndMemory", True, s1["id"], "s1")
    listed = api.listVMSnapshot(virtualmachineid=vm["id"])
    assert listed["count"] == 2 and [x["displayname"] for x in listed["vmSnapshot"]] == ["s1", "s2"]
    assert _snaps(api, vm)["s1"]["current"] is False
    assert api.listVMSnapshot(name="s2")["vmSnapshot"][0]["id"] == s2["id"]
    assert api.listVMSnapshot(name=s1["name"])["vmSnapshot"][0]["id"] == s1["id"]     # or by its own name
    assert api.listVMSnapshot(vmsnapshotid=s1["id"])["count"] == 1
    # another tenant neither sees, reverts, deletes nor snapshots
    acc = api.createAccount(username="bob", password="pw-bob", accounttype=0)["account"]
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    bob = client(server, keys["apikey"], keys["secretkey"])
    assert bob.listVMSnapshot() == {} and bob.listVMSnapshot(listall=True) == {}
    for call in (lambda: bob.deleteVMSnapshot(vmsnapshotid=s1["id"]),
                 lambda: bob.revertToVMSnapshot(vmsnapshotid=s2["id"]),
                 lambda: bob.createVMSnapshot(virtualmachineid=vm["id"])):
        assert error_of(call)[0] == 531

    # while the VM has VM snapshots its volumes stay as they are (CloudStack's rules, 431 naming the snapshots)
    for call, words in [(lambda: api.attachVolume(id=spare["id"], virtualmachineid=vm["id"]), "Unable to attach"),
                        (lambda: api.detachVolume(id=data["id"]), "Unable to detach"),
                        (lambda: api.resizeVolume(id=data["id"], size=2), "cannot be resized"),
                        (lambda: api.migrateVolume(volumeid=data["id"], storageid=dc["pool"]["id"], livemigrate=True),
                         "cannot be migrated"),
                        (lambda: api.scaleVirtualMachine(id=vm["id"], serviceofferingid=dc["so"]["id"]),
                         "Unable to change the service offering")]:
        code, text = error_of(call)
        assert code == 431 and words in text and "s1, s2" in text, text

    # a running VM reverts only to a memory snapshot, a stopped one only to a disk snapshot
    code, text = error_of(lambda: api.revertToVMSnapshot(vmsnapshotid=s1["id"]))
    assert code == 431 and "revert not allowed" in text
    back = api.revertToVMSnapshot(vmsnapshotid=s2["id"])["virtualmachine"]
    assert back["id"] == vm["id"] and back["state"] == "Running"
    api.stopVirtualMachine(id=vm["id"])
    code, text = error_of(lambda: api.revertToVMSnapshot(vmsnapshotid=s2["id"]))
    assert code == 431 and "revert not allowed" in text
    api.revertToVMSnapshot(vmsnapshotid=s1["id"])
    assert _snaps(api, vm)["s1"]["current"] is True and _snaps(api, vm)["s2"]["current"] is False
    code, text = error_of(lambda: api.createVMSnapshot(virtualmachineid=vm["id"], snapshotmemory=True))
    assert code == 431 and "not in Running state" in text

    # a volume snapshot of the VM under way blocks a VM snapshot; an interrupted create is Error, deletable
    api.addImageStore(name="img", provider="NFS", url="nfs://10.0.0.2/images", zoneid=zone["id"])
    vs = api.createSnapshot(volumeid=data["id"])["snapshot"]
    code, text = error_of(lambda: api.revertSnapshot(id=vs["id"]))
    assert code == 431 and "reverting the volume would discard them" in text
    with server.db.session() as s:
        s.scalar(select(Snapshot).where(Snapshot.uuid == vs["id"])).state = "BackingUp"
    code, text = error_of(lambda: api.createVMSnapshot(virtualmachineid=vm["id"]))
    assert code == 431 and f"Volume snapshot {vs['name']}" in text
    with server.db.session() as s:
        s.scalar(select(Snapshot).where(Snapshot.uuid == vs["id"])).state = "BackedUp"
    SimulatedHost(dc["host"]["id"]).state["fail"] = {"vm_snapshot_create": "no space left on device"}
    code, text = error_of(lambda: api.createVMSnapshot(virtualmachineid=vm["id"], name="s3"))
    assert "no space left" in text
    SimulatedHost(dc["host"]["id"]).state["fail"] = {}
    failed = _snaps(api, vm)["s3"]
    assert failed["state"] == "Error" and "no space left" in failed["status"]
    assert {v["state"] for v in api.listVolumes(virtualmachineid=vm["id"])["volume"]} == {"Ready"}
    api.deleteVMSnapshot(vmsnapshotid=failed["id"])

    # vmsnapshot.max; deleting a middle snapshot hands its child to its parent, deleting the current one
    # makes its parent current
    s3 = api.createVMSnapshot(virtualmachineid=vm["id"], name="s3")["vmsnapshot"]
    assert s3["parent"] == s1["id"]           # the VM was reverted to s1: s1 is the parent, not s2
    api.updateConfiguration(name="vmsnapshot.max", value="3")
    code, text = error_of(lambda: api.createVMSnapshot(virtualmachineid=vm["id"], name="s4"))
    assert code == 431 and "vmsnapshot.max" in text
    api.deleteVMSnapshot(vmsnapshotid=s1["id"])
    left = _snaps(api, vm)
    assert set(left) == {"s2", "s3"} and "parent" not in left["s2"] and "parent" not in left["s3"]
    s4 = api.createVMSnapshot(virtualmachineid=vm["id"], name="s4")["vmsnapshot"]
    assert s4["parent"] == s3["id"]
    api.deleteVMSnapshot(vmsnapshotid=s4["id"])
    assert _snaps(api, vm)["s3"]["current"] is True

    # the VM's expunge takes its VM snapshots with it; then volumes move freely again
    api.destroyVirtualMachine(id=vm["id"], expunge=True)
    with server.db.session() as s:
        rows = s.scalars(select(VMSnapshot)).all()
        assert rows and all(r.removed is not None and r.state == "Removed" for r in rows)
    assert api.listVMSnapshot(listall=True) == {}
    api.resizeVolume(id=data["id"], size=2)


# ---------------------------------------------------------------- real images, simulated guests


def _snapshot_names(path):
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                                     capture_output=True, text=True).stdout)
    return [x["name"] for x in info.get("snapshots") or []]


def test_stopped_vm_snapshots_of_all_disks_revert_and_delete_the_middle_one(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    custom = api.createDiskOffering(name="c", customized=True, displaytext="c")["diskoffering"]
    vm, data = _vm_with_data(api, cloud["zone"], cloud["so"], custom)
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    images = [tmp / "primary" / root["path"], tmp / "primary" / data["path"]]
    api.stopVirtualMachine(id=vm["id"])
    taken = []
    for i, pattern in enumerate((0x11, 0x22, 0x33)):
        for img in images:
            qemu_io(img, f"write -P {pattern + i} 0 1M")
        taken.append(api.createVMSnapshot(virtualmachineid=vm["id"], name=f"v{i}")["vmsnapshot"])
    for img in images:
        assert _snapshot_names(img) == [t["id"] for t in taken]
        qemu_io(img, "write -P 0x99 0 1M")
    api.deleteVMSnapshot(vmsnapshotid=taken[1]["id"])
    for img in images:
        assert _snapshot_names(img) == [taken[0]["id"], taken[2]["id"]]
    assert _snaps(api, vm)["v2"]["parent"] == taken[0]["id"]
    for t, pattern in ((taken[0], 0x11), (taken[2], 0x33 + 2)):
        api.revertToVMSnapshot(vmsnapshotid=t["id"])
        for img in images:
            qemu_io(img, f"read -P {pattern} 0 1M")
    # a disk missing the snapshot: nothing is reverted, the snapshot stays Ready
    subprocess.run(["qemu-img", "snapshot", "-d", taken[0]["id"], str(images[1])], check=True)
    qemu_io(images[0], "write -P 0x77 0 1M")
    code, text = error_of(lambda: api.revertToVMSnapshot(vmsnapshotid=taken[0]["id"]))
    assert "do not hold VM snapshot" in text
    qemu_io(images[0], "read -P 0x77 0 1M")
    assert _snaps(api, vm)["v0"]["state"] == "Ready"
    api.startVirtualMachine(id=vm["id"])
    api.destroyVirtualMachine(id=vm["id"], expunge=True)
    assert _snapshot_names(images[1]) == []            # the detached data disk keeps no VM snapshot


def test_a_vm_snapshot_revert_drops_the_incremental_bitmaps_so_the_next_backup_is_full(cloud):
    """With kvm.incremental.snapshot on, a volume snapshot leaves a dirty bitmap in the image; qemu-img refuses to
    apply an internal snapshot under it, and after the rollback it would not cover the change anyway."""
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    api.updateConfiguration(name="kvm.incremental.snapshot", value="true")
    custom = api.createDiskOffering(name="c", customized=True, displaytext="c")["diskoffering"]
    vm, data = _vm_with_data(api, cloud["zone"], cloud["so"], custom)
    image = tmp / "primary" / data["path"]
    api.stopVirtualMachine(id=vm["id"])
    qemu_io(image, "write -P 0x11 0 1M")
    full = api.createSnapshot(volumeid=data["id"])["snapshot"]
    assert full["state"] == "BackedUp" and "parent" not in full
    assert [b["name"] for b in img_info(image)["format-specific"]["data"].get("bitmaps", [])] == [f"volstack-{full['id']}"]
    vs = api.createVMSnapshot(virtualmachineid=vm["id"], name="before")["vmsnapshot"]
    qemu_io(image, "write -P 0x22 0 1M")
    api.revertToVMSnapshot(vmsnapshotid=vs["id"])
    qemu_io(image, "read -P 0x11 0 1M")
    assert not img_info(image)["format-specific"]["data"].get("bitmaps")
    qemu_io(image, "write -P 0x33 1M 1M")
    after = api.createSnapshot(volumeid=data["id"])["snapshot"]
    assert after["state"] == "BackedUp" and "parent" not in after, "a full backup, not an incremental one"


# ---------------------------------------------------------------- real QEMU guests (TCG)

@pytest.fixture
def qemu_cloud(server, tmp_path):
    """One `volstack agent` with real QEMU and a SharedMountPoint pool; guests boot the tiny test kernel."""
    from agentproc import AgentProcess
    from guest import guest_image_dir
    agent = AgentProcess(tmp_path / "agent", name="kvm1").start()
    api = client(server)
    dc = add_datacenter(api, "qz", "qp", "qc", [agent])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    (tmp_path / "primary").mkdir()
    api.createStoragePool(name="primary", url=f"SharedMountPoint://localhost{tmp_path / 'primary'}",
                          zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"])
    custom = api.createDiskOffering(name="custom", customized=True, displaytext="c")["diskoffering"]
    so = api.createServiceOffering(name="tiny", cpunumber=1, cpuspeed=500, memory=256,
                                   displaytext="tiny")["serviceoffering"]
    image = guest_image_dir()
    boot = {"details[0].kernel": str(image / "vmlinuz"), "details[0].initrd": str(image / "initrd.img"),
            "details[0].append": "console=ttyS0 quiet panic=-1"}
    yield dict(api=api, zone=zone, so=so, custom=custom, boot=boot, agent=agent, tmp=tmp_path)
    agent.kill_guests()
    agent.stop()


def _serial(vol) -> str:
    return vol["id"].replace("-", "")[:20]


def _console(c, vm):
    """The guest's console (and its second QMP monitor's path), once it answers."""
    from guest import GuestConsole
    listed = next(v for v in c["agent"].client.call("vm_list")["vms"] if v["name"] == vm["id"])
    console = GuestConsole(listed["console"], timeout=60)
    console.ping_until_ready()
    return console, listed["monitor"]


def _paused_seconds(events) -> float:
    stop = next(e for e in events if e["event"] == "STOP")["timestamp"]
    resume = next(e for e in events if e["event"] == "RESUME")["timestamp"]
    return resume["seconds"] - stop["seconds"] + (resume["microseconds"] - stop["microseconds"]) / 1e6


@pytest.mark.slow
def test_live_vm_snapshots_of_a_writing_guest_disk_only_and_with_memory(qemu_cloud):
    from guest import Qmp, pattern_sha256
    c, api = qemu_cloud, qemu_cloud["api"]
    vm = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"], rootdisksize=1,
                                  name="g1", **c["boot"])["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    data = api.createVolume(name="data", zoneid=c["zone"]["id"], diskofferingid=c["custom"]["id"], size=1)["volume"]
    api.attachVolume(id=data["id"], virtualmachineid=vm["id"])
    con, monitor = _console(c, vm)
    disks = [_serial(root), _serial(data)]
    for d in disks:
        con.dev(d)
        con.write(d, seed=1, mib=8)

    # disk only, while the guest keeps writing to its data disk: both disks at one instant, the guest never paused
    dev = con.dev(_serial(data))
    con.sh(f"(while true; do dd if=/dev/urandom of={dev} bs=1M count=4 seek=16 oflag=direct 2>/dev/null; done) "
           ">/dev/null 2>&1 & echo $! > /tmp/writer")
    watch = Qmp(monitor)
    s1 = api.createVMSnapshot(virtualmachineid=vm["id"], name="disk-only")["vmsnapshot"]
    assert (s1["state"], s1["type"]) == ("Ready", "Disk")
    watch.cmd("query-status")
    assert not [e for e in watch.events if e["event"] == "STOP"], watch.events
    watch.close()
    con.sh("kill $(cat /tmp/writer)")
    for d in disks:
        con.write(d, seed=2, mib=8)
    code, text = error_of(lambda: api.revertToVMSnapshot(vmsnapshotid=s1["id"]))
    assert code == 431 and "stopped VM to disk type" not in text and "disk snapshot" in text
    api.stopVirtualMachine(id=vm["id"], forced=True)
    api.revertToVMSnapshot(vmsnapshotid=s1["id"])
    for vol in (root, data):
        path = c["tmp"] / "primary" / vol["path"]
        subprocess.run(["qemu-img", "check", "-q", str(path)], check=True)
    api.startVirtualMachine(id=vm["id"])
    con, monitor = _console(c, vm)
    for d in disks:
        con.dev(d)
        assert con.checksum(d, 8) == pattern_sha256(1, 8), f"disk {d} is not back at the snapshot"

    # with memory: the running guest goes back to that instant (its tmpfs and its disks) and runs on
    con.sh("echo alpha > /tmp/marker")
    con.write(_serial(data), seed=3, mib=4)
    watch = Qmp(monitor)
    s2 = api.createVMSnapshot(virtualmachineid=vm["id"], name="with-memory", snapshotmemory=True)["vmsnapshot"]
    assert (s2["type"], s2["parent"], s2["current"]) == ("DiskAndMemory", s1["id"], True)
    watch.cmd("query-status")
    print(f"\nmemory snapshot of a 256 MiB guest: paused {_paused_seconds(watch.events):.2f} s")
    con.sh("echo beta > /tmp/marker")
    con.write(_serial(data), seed=4, mib=4)
    mark = len(watch.events)
    back = api.revertToVMSnapshot(vmsnapshotid=s2["id"])["virtualmachine"]
    assert back["state"] == "Running"
    assert watch.cmd("query-status")["status"] == "running"
    print(f"revert to it: paused {_paused_seconds(watch.events[mark:]):.2f} s")
    watch.close()
    con.ping_until_ready()
    assert con.sh("cat /tmp/marker") == ["alpha"]
    assert con.checksum(_serial(data), 4) == pattern_sha256(3, 4)
    assert con.checksum(_serial(root), 8) == pattern_sha256(1, 8)

    # delete the first (the parent): the memory snapshot stays revertible; then delete it on the running guest
    api.deleteVMSnapshot(vmsnapshotid=s1["id"])
    con.sh("echo gamma > /tmp/marker")
    api.revertToVMSnapshot(vmsnapshotid=s2["id"])
    con.ping_until_ready()
    assert con.sh("cat /tmp/marker") == ["alpha"]
    api.deleteVMSnapshot(vmsnapshotid=s2["id"])
    for vol in (root, data):
        assert _snapshot_names(c["tmp"] / "primary" / vol["path"]) == []
    api.resizeVolume(id=data["id"], size=2)          # no VM snapshots left: the volume may change again


@pytest.mark.slow
def test_expunge_takes_the_vm_snapshot_out_of_a_former_data_disk_another_guest_runs(qemu_cloud):
    """A destroyed VM's data disks are detached and may be attached to another running VM before the expunge: that
    guest's QEMU has the image open, so the snapshot leaves it through QMP instead of blocking the expunge."""
    c, api = qemu_cloud, qemu_cloud["api"]
    at = dict(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"], rootdisksize=1, **c["boot"])
    g1 = api.deployVirtualMachine(name="g1", **at)["virtualmachine"]
    data = api.createVolume(name="data", zoneid=c["zone"]["id"], diskofferingid=c["custom"]["id"], size=1)["volume"]
    data = api.attachVolume(id=data["id"], virtualmachineid=g1["id"])["volume"]
    api.stopVirtualMachine(id=g1["id"], forced=True)
    snap = api.createVMSnapshot(virtualmachineid=g1["id"], name="before")["vmsnapshot"]
    image = c["tmp"] / "primary" / data["path"]
    assert _snapshot_names(image) == [snap["id"]]
    api.destroyVirtualMachine(id=g1["id"])                 # the data disk is detached; the VM snapshot stays
    g2 = api.deployVirtualMachine(name="g2", **at)["virtualmachine"]
    api.attachVolume(id=data["id"], virtualmachineid=g2["id"])
    api.expungeVirtualMachine(id=g1["id"])
    assert api.listVMSnapshot(listall=True) == {} and _snapshot_names(image) == []
    assert api.listVirtualMachines(id=g2["id"])["virtualmachine"][0]["state"] == "Running"


@pytest.mark.slow
def test_vm_snapshots_on_an_nfs_pool_through_qemus_nfs_client(server, tmp_path, nfs_pool):
    """qemu-img reaches NFS pools as nfs:// (no kernel mount): take, revert and delete there too."""
    from agentproc import AgentProcess
    agent = AgentProcess(tmp_path / "agent", hypervisor="simulator", name="kvm1").start()
    try:
        api = client(server)
        dc = add_datacenter(api, "nz", "np", "nc", [agent])
        zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
        url, export = nfs_pool
        api.createStoragePool(name="nfs", url=url, zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"])
        so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=128,
                                       displaytext="s")["serviceoffering"]
        custom = api.createDiskOffering(name="c", customized=True, displaytext="c")["diskoffering"]
        vm, data = _vm_with_data(api, zone, so, custom)
        image = export / data["path"]
        api.stopVirtualMachine(id=vm["id"])
        qemu_io(image, "write -P 0x5a 0 1M")
        snap = api.createVMSnapshot(virtualmachineid=vm["id"], name="on-nfs")["vmsnapshot"]
        qemu_io(image, "write -P 0x00 0 1M")
        api.revertToVMSnapshot(vmsnapshotid=snap["id"])
        qemu_io(image, "read -P 0x5a 0 1M")
        api.deleteVMSnapshot(vmsnapshotid=snap["id"])
        assert _snapshot_names(image) == []
    finally:
        agent.stop()
