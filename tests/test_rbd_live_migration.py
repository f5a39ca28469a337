"""Issue 5 item 5, live: a volume attached to a running TCG guest moves between an RBD pool and NFS / host-local
pools through QEMU's mirror (migrateVolume livemigrate=true), and with its VM to another host
(migrateVirtualMachineWithVolume), while the guest writes to it. Real Ceph, nfs-ganesha, `volstack agent`
processes with real QEMU; the bytes are checked by the guest itself."""
import hashlib
import subprocess

import pytest
from cs import CloudStackApiException

from agentproc import wait_until
from guest import GuestConsole, Qmp, guest_image_dir, pattern_bytes, pattern_sha256
from helpers import migration_interrupted, pool_spec, wait_job
from support import client
from test_rbd_pools import create_rbd_pool, kvm, no_secret  # noqa: F401  (kvm is a fixture)
from test_storage_real import boot, serial
from volstack.services import vms, volumes
from volstack.services.context import system_context

MIB = 2 ** 20
pytestmark = pytest.mark.slow
BG_MIB, BG_AT = 8, 8          # the background writer's region: MiB 8-15 of the disk


@pytest.fixture
def lab(kvm, ceph, nfs_pool, tmp_path):
    """kvm (two agents) with an RBD pool (tag RBD), an NFS pool (tag NFS), a local pool on the first host and a
    TCG guest there whose 1 GiB data disk is on RBD with 8 MiB of seed 1 written by the guest."""
    api = kvm["api"]
    rbd = create_rbd_pool(kvm, ceph, name="ceph")
    nfs_url, nfs_dir = nfs_pool
    nfs = api.createStoragePool(name="nfs", url=nfs_url, tags="NFS", **_cluster(kvm))["storagepool"]
    (tmp_path / "local0").mkdir()
    local = api.createStoragePool(name="local0", url=f"file://localhost{tmp_path / 'local0'}", scope="host",
                                  zoneid=kvm["zone"]["id"], hostid=kvm["hosts"][0]["id"])["storagepool"]
    kvm["so"] = api.createServiceOffering(name="guest", cpunumber=1, cpuspeed=500, memory=256, rootdisksize=1,
                                          displaytext="guest")["serviceoffering"]
    kvm["image"] = guest_image_dir()
    vm, con = boot(kvm, 0)
    con.sh("echo the-same-guest > /tmp/marker")       # tmpfs: only this very guest instance has it
    off = api.createDiskOffering(name="rbd", displaytext="rbd", customized=True, tags="RBD")["diskoffering"]
    vol = api.createVolume(diskofferingid=off["id"], name="live", zoneid=kvm["zone"]["id"], size=1)["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert vol["storageid"] == rbd["id"] and vol["path"] in ceph.images()
    dev = con.dev(serial(vol))
    con.write(serial(vol), seed=1, mib=8)
    return dict(kvm, rbd=rbd, nfs=nfs, nfs_dir=nfs_dir, local=local, local_dir=tmp_path / "local0", vm=vm, con=con,
                vol=vol, dev=dev)


def _cluster(kvm):
    return dict(zoneid=kvm["zone"]["id"], podid=kvm["pod"]["id"], clusterid=kvm["cluster"]["id"])


class Writer:
    """A background loop in the guest rewriting MiB 8-15 of the disk, pass after pass, each pass with the next
    seed (pass p writes seed base+p), so a write lost by a mirror shows as an old pattern. /tmp/bgpos holds the
    last MiB written ("p i"); it stops after the MiB in progress once /tmp/bgstop exists."""

    def __init__(self, con, dev, base: int):
        self.con, self.base = con, base
        con.sh("rm -f /tmp/bgstop /tmp/bgpos /tmp/bgdone")
        con.sh(f"(p=0; while [ ! -e /tmp/bgstop ]; do i=0; while [ $i -lt {BG_MIB} ] && [ ! -e /tmp/bgstop ]; do "
               f"yes \"volstack seed=$(({base} + p)) mib=$i\" | head -c 1048576 | dd of={dev} bs=1048576 "
               f"seek=$(({BG_AT} + i)) iflag=fullblock oflag=direct conv=notrunc 2>/dev/null; "
               "echo \"$p $i\" > /tmp/bgpos; i=$((i + 1)); done; p=$((p + 1)); done; "
               "echo done > /tmp/bgdone) >/dev/null 2>&1 &")
        self.started = self.wait_pos(lambda p: p is not None)

    def pos(self):
        out = self.con.sh("cat /tmp/bgpos 2>/dev/null", check=False)
        return tuple(map(int, out[0].split())) if out else None

    def wait_pos(self, ok):
        def probe():
            p = self.pos()
            return p if ok(p) else None
        return wait_until("the guest's background writer", probe, timeout=120, interval=0.2)

    def stop(self) -> str:
        """Stop after at least one full pass; the sha256 the region must then have."""
        self.wait_pos(lambda p: p is not None and p[0] >= 1)
        self.con.sh("touch /tmp/bgstop")
        wait_until("the writer to stop", lambda: self.con.sh("cat /tmp/bgdone 2>/dev/null", check=False) == ["done"],
                   timeout=120, interval=0.2)
        p, i = self.pos()
        want = b"".join(pattern_bytes(self.base + (p if j <= i else p - 1), j + 1)[j * MIB:] for j in range(BG_MIB))
        return hashlib.sha256(want).hexdigest()


def _live_move(lab, server, pool, seed_base: int, gone):
    """migrateVolume livemigrate=true while the guest writes; the guest's bytes, the records and the old copy
    are checked. Returns the volume as the job reported it."""
    api, con, vol = lab["api"], lab["con"], lab["vol"]
    before = api.listVolumes(id=vol["id"])["volume"][0]
    writer = Writer(con, lab["dev"], seed_base)
    jobid = client(server, fetch_result=False).migrateVolume(volumeid=vol["id"], storageid=pool["id"],
                                                             livemigrate=True)["jobid"]
    job = wait_job(server, jobid, polls=30000)
    assert job["jobstatus"] == 1, job
    assert writer.pos() != writer.started, "the guest wrote while the volume moved"
    region = writer.stop()
    moved = job["jobresult"]["volume"]
    listed = api.listVolumes(id=vol["id"])["volume"][0]
    assert (moved["storageid"], listed["storageid"], listed["state"]) == (pool["id"], pool["id"], "Ready")
    assert listed["path"] == moved["path"] and listed["virtualmachineid"] == lab["vm"]["id"]
    assert gone(before["path"]), f"the old copy {before['path']} was removed"
    assert con.checksum(serial(vol), 8) == pattern_sha256(1, 8), "data written before the move"
    assert con.checksum(serial(vol), BG_MIB, offset_mib=BG_AT) == region, "data written during the move"
    con.write(serial(vol), seed=seed_base - 1, mib=2, offset_mib=20)       # and after it, on the new image
    assert con.checksum(serial(vol), 2, offset_mib=20) == pattern_sha256(seed_base - 1, 2)
    _still_running(lab, 0)
    return listed


def _still_running(lab, host_index: int):
    """The same guest instance runs, on that host, as the API says."""
    api, vm = lab["api"], lab["vm"]
    listed = api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]
    assert (listed["state"], listed["hostid"]) == ("Running", lab["hosts"][host_index]["id"])
    there = [v for v in lab["agents"][host_index].client.call("vm_list")["vms"] if v["name"] == vm["id"]]
    assert there and there[0]["state"] == "Running"
    assert lab["con"].sh("cat /tmp/marker") == ["the-same-guest"]


def _key_kept_secret(lab, ceph, tmp_path):
    """The cephx key is on no QEMU command line, in no log, response or event."""
    for a in lab["agents"]:
        for pid in a.guest_pids():
            assert ceph.key.encode() not in open(f"/proc/{pid}/cmdline", "rb").read()
    for log in [*tmp_path.glob("*.log"), *tmp_path.glob("agent*/vms/*/*.log")]:
        assert ceph.key.encode() not in log.read_bytes(), log
    api = lab["api"]
    no_secret(ceph, api.listVolumes(listall=True), api.listEvents(listall=True), api.listVirtualMachines(listall=True))


def test_live_migration_rbd_to_nfs_and_local_and_back_while_the_guest_writes(lab, ceph, server, tmp_path):
    api, vol = lab["api"], lab["vol"]
    on_nfs = _live_move(lab, server, lab["nfs"], 10,
                        lambda old: old not in ceph.images())
    assert (lab["nfs_dir"] / on_nfs["path"]).exists()
    on_rbd = _live_move(lab, server, lab["rbd"], 20,
                        lambda old: not (lab["nfs_dir"] / old).exists())
    assert on_rbd["path"] in ceph.images() and ceph.image_info(on_rbd["path"])["size"] == 2 ** 30
    on_local = _live_move(lab, server, lab["local"], 30,
                          lambda old: old not in ceph.images())
    assert (lab["local_dir"] / on_local["path"]).exists()
    back = _live_move(lab, server, lab["rbd"], 40,
                      lambda old: not (lab["local_dir"] / old).exists())
    assert back["path"] in ceph.images()
    moves = [e["description"] for e in api.listEvents(type="VOLUME.MIGRATE", listall=True)["event"]]
    assert sum("while attached" in d for d in moves) == 4 and not any("could not be removed" in d for d in moves)

    # another host's local pool is out of the guest's reach: refused with the reason, nothing moves
    (tmp_path / "local1").mkdir()
    other = api.createStoragePool(name="local1", url=f"file://localhost{tmp_path / 'local1'}", scope="host",
                                  zoneid=lab["zone"]["id"], hostid=lab["hosts"][1]["id"])["storagepool"]
    with pytest.raises(CloudStackApiException) as e:
        api.migrateVolume(volumeid=vol["id"], storageid=other["id"], livemigrate=True)
    assert "local to another host" in e.value.error["errortext"]
    assert api.listVolumes(id=vol["id"])["volume"][0]["storageid"] == lab["rbd"]["id"]
    assert list((tmp_path / "local1").iterdir()) == []

    # a qcow2 volume on NFS lands raw on RBD (the guest reads its data through the new format)
    nfs_off = api.createDiskOffering(name="nfs", displaytext="nfs", customized=True, tags="NFS")["diskoffering"]
    q = api.createVolume(diskofferingid=nfs_off["id"], name="q", zoneid=lab["zone"]["id"], size=1)["volume"]
    q = api.attachVolume(id=q["id"], virtualmachineid=lab["vm"]["id"])["volume"]
    assert q["storageid"] == lab["nfs"]["id"]
    assert "qcow2" in subprocess.run(["qemu-img", "info", str(lab["nfs_dir"] / q["path"])], capture_output=True,
                                     text=True).stdout
    con = lab["con"]
    con.dev(serial(q))
    con.write(serial(q), seed=5, mib=4)
    q = api.migrateVolume(volumeid=q["id"], storageid=lab["rbd"]["id"], livemigrate=True)["volume"]
    assert q["storageid"] == lab["rbd"]["id"] and q["path"] in ceph.images()
    assert con.checksum(serial(q), 4) == pattern_sha256(5, 4)
    _still_running(lab, 0)
    _key_kept_secret(lab, ceph, tmp_path)


def _secrets_in(agent, vm_uuid) -> list[str]:
    """Ids of the secret objects in the guest's QEMU, asked on its operators' QMP monitor."""
    mon = next(v for v in agent.client.call("vm_list")["vms"] if v["name"] == vm_uuid)["monitor"]
    q = Qmp(mon)
    try:
        return [o["name"] for o in q.cmd("qom-list", path="/objects") if o["type"] == "child<secret>"]
    finally:
        q.close()


def _move_vm(lab, server, to: int, pool, seed_base: int) -> dict:
    """migrateVirtualMachineWithVolume to host `to` with the data disk moved to `pool`, while the guest writes to
    it; returns the disk as listed afterwards."""
    api, vm, vol = lab["api"], lab["vm"], lab["vol"]
    writer = Writer(lab["con"], lab["dev"], seed_base)
    jobid = client(server, fetch_result=False).migrateVirtualMachineWithVolume(
        virtualmachineid=vm["id"], hostid=lab["hosts"][to]["id"],
        **{"migrateto[0].volume": vol["id"], "migrateto[0].pool": pool["id"]})["jobid"]
    job = wait_job(server, jobid, polls=30000)
    assert job["jobstatus"] == 1, job
    assert job["jobresult"]["virtualmachine"]["hostid"] == lab["hosts"][to]["id"]
    assert [v for v in lab["agents"][1 - to].client.call("vm_list")["vms"] if v["name"] == vm["id"]] == [], \
        "the source's copy is gone"
    there = next(v for v in lab["agents"][to].client.call("vm_list")["vms"] if v["name"] == vm["id"])
    lab["con"].close()
    lab["con"] = writer.con = GuestConsole(there["console"], timeout=60)
    lab["con"].ping_until_ready(timeout=60)
    assert writer.pos() != writer.started, "the guest wrote while it moved"
    region = writer.stop()
    _still_running(lab, to)
    con = lab["con"]
    assert con.checksum(serial(vol), 8) == pattern_sha256(1, 8), "data written before the move"
    assert con.checksum(serial(vol), BG_MIB, offset_mib=BG_AT) == region, "data written during the move"
    listed = api.listVolumes(id=vol["id"])["volume"][0]
    assert (listed["storageid"], listed["state"]) == (pool["id"], "Ready")
    return listed


def test_migrate_vm_with_its_rbd_volume_to_nfs_on_the_other_host_and_back(lab, ceph, server, tmp_path):
    """The data disk moves RBD -> NFS while the VM moves to the second host, then NFS -> RBD on the way back; a
    second RBD disk stays in place and the destination's QEMU gets the cephx key only as a secret object."""
    api, vm, rbd = lab["api"], lab["vm"], lab["rbd"]
    off = api.listDiskOfferings(name="rbd")["diskoffering"][0]
    stay = api.createVolume(diskofferingid=off["id"], name="stay", zoneid=lab["zone"]["id"], size=1)["volume"]
    stay = api.attachVolume(id=stay["id"], virtualmachineid=vm["id"])["volume"]
    lab["con"].dev(serial(stay))
    lab["con"].write(serial(stay), seed=2, mib=4)
    old = lab["vol"]["path"]
    on_nfs = _move_vm(lab, server, 1, lab["nfs"], 50)
    assert old not in ceph.images() and (lab["nfs_dir"] / on_nfs["path"]).exists()
    assert api.listVolumes(id=stay["id"])["volume"][0]["storageid"] == rbd["id"], "the other disk stays on RBD"
    assert _secrets_in(lab["agents"][1], vm["id"]) == ["volstack-key-" + rbd["id"].replace("-", "")[:40]]
    _key_kept_secret(lab, ceph, tmp_path)
    con = lab["con"]
    assert con.checksum(serial(stay), 4) == pattern_sha256(2, 4)
    con.write(serial(stay), seed=3, mib=2, offset_mib=4)                 # RBD through the destination's QEMU
    back = _move_vm(lab, server, 0, rbd, 60)
    assert back["path"] in ceph.images() and not (lab["nfs_dir"] / on_nfs["path"]).exists()
    assert lab["con"].checksum(serial(stay), 6) == hashlib.sha256(pattern_bytes(2, 4) + pattern_bytes(3, 2)).hexdigest()
    _key_kept_secret(lab, ceph, tmp_path)
    events = [e["description"] for e in api.listEvents(type="VM.MIGRATE", listall=True)["event"]]
    assert sum("with 1 volume(s)" in d for d in events) == 2


def test_a_live_move_whose_job_died_is_settled_from_what_the_guest_uses(lab, ceph, server):
    """The management server running a live migrateVolume stops: the mirror it started may switch the guest to
    the copy afterwards. Settling asks the guest's host, so the record follows the image the guest really uses."""
    api, vol, vm, con = lab["api"], lab["vol"], lab["vm"], lab["con"]
    agent = lab["agents"][0].client
    # 1. the mirror switched the guest to NFS after the job died: the volume is recorded there, RBD's image goes
    migration_interrupted(server, vol["id"], lab["nfs"]["id"], vol["path"], "raw", live=True)
    agent.call("volume_mirror", vm=vm["id"], serial=serial(vol), dst_pool=pool_spec(server, lab["nfs"]["id"]),
               dst_name=vol["path"], format="raw")
    volumes.settle_interrupted(server.db, system_context(), vol["id"], "migrateVolume")
    after = api.listVolumes(id=vol["id"])["volume"][0]
    assert (after["state"], after["storageid"]) == ("Ready", lab["nfs"]["id"])
    assert vol["path"] not in ceph.images() and (lab["nfs_dir"] / vol["path"]).exists()
    assert con.checksum(serial(vol), 8) == pattern_sha256(1, 8)
    recovered = [e["description"] for e in api.listEvents(type="VOLUME.RECOVER", listall=True)["event"]]
    assert any("already switched to the copy on nfs" in d for d in recovered)

    # 2. a migrateVirtualMachineWithVolume died while the mirror back to RBD was copying: the mirror is stopped,
    #    its copy removed, and the volume stays on NFS, usable
    con.write(serial(vol), seed=3, mib=8, offset_mib=8)
    migration_interrupted(server, vol["id"], lab["rbd"]["id"], vol["path"], "raw", live=True)
    task = agent.call_async("volume_mirror", vm=vm["id"], serial=serial(vol), dst_pool=pool_spec(server, lab["rbd"]["id"]),
                            dst_name=vol["path"], format="raw", speed=1 << 20)
    wait_until("the mirror to copy", lambda: agent.task(task)["progress"] > 0, timeout=60)
    vms.settle_interrupted(server.db, system_context(), vm["id"], "migrateVirtualMachineWithVolume")
    after = api.listVolumes(id=vol["id"])["volume"][0]
    assert (after["state"], after["storageid"]) == ("Ready", lab["nfs"]["id"])
    assert "interrupted" in after["status"]
    assert agent.task(task)["state"] == "failed" and vol["path"] not in ceph.images()
    assert con.checksum(serial(vol), 16) == hashlib.sha256(pattern_bytes(1, 8) + pattern_bytes(3, 8)).hexdigest()
    moved = api.migrateVolume(volumeid=vol["id"], storageid=lab["rbd"]["id"], livemigrate=True)["volume"]
    assert moved["storageid"] == lab["rbd"]["id"] and not (lab["nfs_dir"] / vol["path"]).exists()
    _still_running(lab, 0)
