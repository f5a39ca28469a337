"""Issue 13 acceptance, real parts: volumes on encrypting offerings are LUKS-encrypted through QEMU on a file
pool (SharedMountPoint), an NFS pool (QEMU's nfs driver, nfs-ganesha) and RBD (QEMU's luks driver over rbd, a real
Ceph cluster). A TCG guest on a real `volstack agent` writes known patterns; the pattern must never be found in
the bytes on the pools (files and RADOS objects) while the guest reads it back, and no passphrase may appear in
a process command line (checked while the guest runs), a log, an event or a response.

One management server, two agents and one guest are shared by the module (the tests run in order)."""
import json
import os
import uuid
from pathlib import Path

import pytest

from agentproc import AgentProcess
from guest import guest_image_dir, pattern_sha256
from support import add_datacenter, client, release_guests, start_server
from test_storage_real import boot, serial
from volstack import crypto
from volstack.db.storage_models import Passphrase

pytestmark = pytest.mark.slow
MIB = 1 << 20


@pytest.fixture(scope="module")
def lab(tmp_path_factory, _nfs_session, ceph):
    from nfsserver import shared_server
    tmp = tmp_path_factory.mktemp("luks")
    ms = start_server(f"sqlite:///{tmp / 'volstack.db'}", tmp)
    agents = [AgentProcess(tmp / f"agent{i}", name=f"lukskvm{i}").start() for i in (1, 2)]
    nfs_server = shared_server()
    pseudo = f"/luks-{uuid.uuid4().hex[:8]}"
    nfs_url, nfs_dir = nfs_server.add_export(pseudo, tmp / "nfs"), tmp / "nfs"
    api = client(ms)
    dc = add_datacenter(api, "lz", "lp", "lc", agents)
    at = dc["at"]
    (tmp / "file").mkdir()
    file_pool = api.createStoragePool(name="file", url=f"SharedMountPoint://localhost{tmp / 'file'}", tags="FILE",
                                      **at)["storagepool"]
    nfs = api.createStoragePool(name="nfs", url=nfs_url, tags="NFS", **at)["storagepool"]
    rbd = api.createStoragePool(name="ceph", url=ceph.rbd_url(), tags="RBD", scope="zone", zoneid=at["zoneid"],
                                hypervisor="KVM", provider="DefaultPrimary")["storagepool"]
    offs = {tag: api.createDiskOffering(name=f"enc-{tag}", displaytext="encrypted", customized=True, tags=tag,
                                        encrypt=True)["diskoffering"] for tag in ("FILE", "NFS", "RBD")}
    clear = api.createDiskOffering(name="clear-FILE", displaytext="clear", customized=True, tags="FILE")["diskoffering"]
    so = api.createServiceOffering(name="enc-root", cpunumber=1, cpuspeed=500, memory=256, rootdisksize=1,
                                   displaytext="encrypted root", encryptroot=True, tags="FILE")["serviceoffering"]
    ctx = dict(api=api, ms=ms, zone=dc["zone"], hosts=dc["hosts"], agents=agents, so=so, image=guest_image_dir(),
               vms=[], pools={"FILE": file_pool, "NFS": nfs, "RBD": rbd},
               dirs={"FILE": tmp / "file", "NFS": nfs_dir}, offs=offs, clear=clear, ceph=ceph, tmp=tmp)
    (tmp / "store").mkdir()
    api.addImageStore(name="store", provider="Filesystem", url=f"file://{tmp / 'store'}", zoneid=dc["zone"]["id"])
    ctx["dirs"]["STORE"] = tmp / "store"
    ctx["vm"], ctx["con"] = boot(ctx, 0)
    yield ctx
    release_guests(api, ctx["vms"], agents)
    nfs_server.remove_export(pseudo)
    ms.stop()


# ---------------------------------------------------------------- what is on the pools, and where secrets could leak

def _needles(seed: int) -> list[bytes]:
    return [f"volstack seed={seed} mib={i}\n".encode() * 2 for i in range(4)]


def pool_bytes(lab):
    """(where, bytes) of every file on the file and NFS pools and every RADOS object of the Ceph pool."""
    for tag in ("FILE", "NFS", "STORE"):
        for p in Path(lab["dirs"][tag]).rglob("*"):
            if p.is_file():
                yield f"{tag}:{p.name}", p.read_bytes()
    from volstack.agent.rbd import RbdPool
    pool = RbdPool(lab["ceph"].spec(), "test")
    with pool.ioctx() as io:
        for obj in io.list_objects():
            yield f"RBD:{obj.key}", io.read(obj.key, 64 * MIB)


def assert_never_in_clear(lab, seed: int) -> None:
    needles = _needles(seed)
    found = [where for where, data in pool_bytes(lab) if any(n in data for n in needles)]
    assert not found, f"the guest's pattern (seed {seed}) is in clear on {found}"


def assert_in_clear_somewhere(lab, seed: int) -> None:
    """The scan can see a pattern: a clear volume's bytes are found (so a miss above means something)."""
    needles = _needles(seed)
    assert any(any(n in data for n in needles) for _, data in pool_bytes(lab)), f"seed {seed} not found in clear"


def passphrases(lab) -> list[str]:
    with lab["ms"].db.session(readonly=True) as s:
        return [crypto.decrypt(r.passphrase) for r in s.query(Passphrase)]


def assert_no_passphrase_leaked(lab, *responses) -> None:
    secrets = passphrases(lab)
    assert secrets, "there are encrypted volumes"
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert not any(x.encode() in cmdline for x in secrets), f"a passphrase is on the command line of {pid}"
    texts = [json.dumps(r) for r in responses]
    texts.append(json.dumps(lab["api"].listEvents(listall=True, page=1, pagesize=500)))
    texts.append(json.dumps(lab["api"].listVolumes(listall=True)))
    for a in lab["agents"]:
        texts.append(Path(a.log.name).read_text(errors="replace"))
        for f in Path(a.state_dir).rglob("*"):
            if f.is_file() and f.suffix in (".json", ".log", ".db", ""):
                texts.append(f.read_bytes().decode(errors="replace"))
    for x in secrets:
        assert not any(x in t for t in texts), "a passphrase is in a log, an event, a response or the agent's state"


def volume(lab, tag: str, name: str, offering=None):
    api = lab["api"]
    return api.createVolume(name=name, zoneid=lab["zone"]["id"], diskofferingid=(offering or lab["offs"][tag])["id"],
                            size=1)["volume"]


# ---------------------------------------------------------------- create, attach, detach, start

def test_encrypted_root_and_data_volumes_on_file_and_nfs_pools(lab):
    api, con, vm = lab["api"], lab["con"], lab["vm"]
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    assert root["encryptformat"] == "LUKS" and root["storageid"] == lab["pools"]["FILE"]["id"]
    clear = volume(lab, "FILE", "clear", lab["clear"])
    assert "encryptformat" not in clear
    seen = []
    for seed, tag in ((11, "FILE"), (12, "NFS")):
        vol = volume(lab, tag, f"enc-{tag}")
        assert vol["encryptformat"] == "LUKS" if "encryptformat" in vol else vol["state"] == "Allocated"
        vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
        assert (vol["storageid"], vol["encryptformat"]) == (lab["pools"][tag]["id"], "LUKS")
        con.dev(serial(vol))
        con.write(serial(vol), seed=seed, mib=4)
        assert con.checksum(serial(vol), 4) == pattern_sha256(seed, 4)
        seen.append(vol)
    clear = api.attachVolume(id=clear["id"], virtualmachineid=vm["id"])["volume"]
    con.dev(serial(clear))
    con.write(serial(clear), seed=19, mib=2)
    listed = api.listVolumes(isencrypted=True, listall=True)["volume"]
    assert {v["id"] for v in listed} == {root["id"], *(v["id"] for v in seen)}
    assert_no_passphrase_leaked(lab, vol, listed)          # while the guest runs with the disks open
    for seed in (11, 12):
        assert_never_in_clear(lab, seed)
    assert_in_clear_somewhere(lab, 19)
    # detach and attach again: the guest reads what it wrote
    for seed, vol in zip((11, 12), seen):
        api.detachVolume(id=vol["id"])
        api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
        con.dev(serial(vol))
        assert con.checksum(serial(vol), 4) == pattern_sha256(seed, 4)
    lab["file_vol"], lab["nfs_vol"] = seen


def console(lab, host_index: int):
    from guest import GuestConsole
    listed = lab["agents"][host_index].client.call("vm_list")["vms"]
    con = GuestConsole(next(v for v in listed if v["name"] == lab["vm"]["id"])["console"], timeout=60)
    con.ping_until_ready()
    return con


# ---------------------------------------------------------------- moves between file, NFS and RBD

def test_cold_and_live_migration_across_file_nfs_and_rbd_stay_encrypted(lab):
    api, con = lab["api"], lab["con"]
    vol, pools = lab["file_vol"], lab["pools"]
    moved = api.migrateVolume(volumeid=vol["id"], storageid=pools["NFS"]["id"], livemigrate=True)["volume"]   # live
    assert (moved["storageid"], moved["encryptformat"]) == (pools["NFS"]["id"], "LUKS")
    assert con.checksum(serial(vol), 4) == pattern_sha256(11, 4)
    con.write(serial(vol), seed=15, mib=2, offset_mib=8)               # written on NFS after the live move
    api.detachVolume(id=vol["id"])
    moved = api.migrateVolume(volumeid=vol["id"], storageid=pools["RBD"]["id"])["volume"]        # cold, NFS -> RBD
    assert (moved["storageid"], moved["encryptformat"], moved["state"]) == (pools["RBD"]["id"], "LUKS", "Ready")
    assert moved["path"] in lab["ceph"].images()
    api.attachVolume(id=vol["id"], virtualmachineid=lab["vm"]["id"])
    con.dev(serial(vol))
    assert con.checksum(serial(vol), 4) == pattern_sha256(11, 4)
    assert con.checksum(serial(vol), 2, offset_mib=8) == pattern_sha256(15, 2)
    # the whole guest moves to the other host: its encrypted disks are opened there with their passphrases
    vm = api.migrateVirtualMachine(virtualmachineid=lab["vm"]["id"], hostid=lab["hosts"][1]["id"])["virtualmachine"]
    assert vm["hostid"] == lab["hosts"][1]["id"]
    lab["con"] = con = console(lab, 1)
    assert con.checksum(serial(vol), 2, offset_mib=8) == pattern_sha256(15, 2)
    assert con.checksum(serial(lab["nfs_vol"]), 4) == pattern_sha256(12, 4)
    for seed in (11, 12, 15):
        assert_never_in_clear(lab, seed)
    assert_no_passphrase_leaked(lab, moved, vm)
    api.detachVolume(id=vol["id"])              # raw on RBD: VM snapshots (below) need qcow2 disks


def test_rbd_snapshot_backup_and_revert_stay_encrypted(lab):
    api, con = lab["api"], lab["con"]
    vol = api.attachVolume(id=volume(lab, "RBD", "enc-rbd")["id"], virtualmachineid=lab["vm"]["id"])["volume"]
    assert (vol["storageid"], vol["encryptformat"]) == (lab["pools"]["RBD"]["id"], "LUKS")
    con.dev(serial(vol))
    con.write(serial(vol), seed=13, mib=4)
    snap = api.createSnapshot(volumeid=vol["id"])["snapshot"]
    assert snap["state"] == "BackedUp"
    con.write(serial(vol), seed=14, mib=4)
    api.detachVolume(id=vol["id"])
    api.revertSnapshot(id=snap["id"])
    api.attachVolume(id=vol["id"], virtualmachineid=lab["vm"]["id"])
    con.dev(serial(vol))
    assert con.checksum(serial(vol), 4) == pattern_sha256(13, 4)
    for seed in (13, 14):
        assert_never_in_clear(lab, seed)                  # the pool's objects and the backup on the image store
    api.detachVolume(id=vol["id"])                        # VM snapshots need every disk qcow2 on a file pool
    lab["rbd_vol"] = vol


def test_vm_snapshot_and_revert_of_encrypted_disks(lab):
    api, vm = lab["api"], lab["vm"]
    con, vol = lab["con"], lab["nfs_vol"]
    snap = api.createVMSnapshot(virtualmachineid=vm["id"], snapshotmemory=False)["vmsnapshot"]
    assert snap["state"] == "Ready"
    con.write(serial(vol), seed=16, mib=4)
    api.stopVirtualMachine(id=vm["id"])
    api.revertToVMSnapshot(vmsnapshotid=snap["id"])
    api.startVirtualMachine(id=vm["id"])
    host = next(i for i, h in enumerate(lab["hosts"])
                if h["id"] == api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["hostid"])
    lab["con"] = con = console(lab, host)
    con.dev(serial(vol))
    assert con.checksum(serial(vol), 4) == pattern_sha256(12, 4)
    for seed in (12, 16):
        assert_never_in_clear(lab, seed)
    api.deleteVMSnapshot(vmsnapshotid=snap["id"])
    # with memory: refused before anything runs (QEMU 7.2 aborts saving memory into an encrypted qcow2)
    from cs import CloudStackApiException
    with pytest.raises(CloudStackApiException) as e:
        api.createVMSnapshot(virtualmachineid=vm["id"], snapshotmemory=True)
    assert e.value.error["errorcode"] == 431 and "snapshotmemory=false" in e.value.error["errortext"]
    assert con.checksum(serial(vol), 4) == pattern_sha256(12, 4), "the guest still runs"


def test_extract_gives_the_encrypted_image_and_deleting_destroys_the_passphrase(lab):
    import subprocess
    import urllib.request
    api = lab["api"]
    api.detachVolume(id=lab["nfs_vol"]["id"])
    url = api.extractVolume(id=lab["nfs_vol"]["id"], mode="HTTP_DOWNLOAD", zoneid=lab["zone"]["id"])["volume"]["url"]
    out = lab["tmp"] / "download.qcow2"
    with urllib.request.urlopen(url) as r, open(out, "wb") as f:
        f.write(r.read())
    info = json.loads(subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(out)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["encrypted"] and info["format-specific"]["data"]["encrypt"]["format"] == "luks"
    assert not any(n in out.read_bytes() for n in _needles(12))
    vol = lab["rbd_vol"]
    before = len(passphrases(lab))
    snaps = api.listSnapshots(volumeid=vol["id"])["snapshot"]
    api.deleteVolume(id=vol["id"])
    assert len(passphrases(lab)) == before, "its snapshot still needs the passphrase"
    for s in snaps:
        api.deleteSnapshot(id=s["id"])
    assert len(passphrases(lab)) == before - 1, "gone with the last user"


def test_resize_grows_the_payload_and_a_damaged_luks_header_is_a_clear_error(lab):
    api, con = lab["api"], lab["con"]
    vm = lab["vm"]
    vol = api.attachVolume(id=volume(lab, "FILE", "resize")["id"], virtualmachineid=vm["id"])["volume"]
    dev = con.dev(serial(vol)).rsplit("/", 1)[-1]
    api.resizeVolume(id=vol["id"], size=2)                                  # live: block_resize on the LUKS node
    sectors = lambda: int(con.sh(f"cat /sys/block/{dev}/size")[-1])         # noqa: E731
    assert sectors() * 512 == 2 << 30, "the guest sees the grown disk"
    con.write(serial(vol), seed=17, mib=1, offset_mib=1536)                 # beyond the old end
    assert con.checksum(serial(vol), 1, offset_mib=1536) == pattern_sha256(17, 1)
    api.detachVolume(id=vol["id"])
    grown = api.resizeVolume(id=vol["id"], size=3)["volume"]                # cold: qemu-img resize with the secret
    assert grown["size"] == 3 << 30 and grown["state"] == "Ready"
    assert_never_in_clear(lab, 17)
    # the LUKS header in the image is damaged: opening it fails with that reason, nothing else changes
    image = Path(lab["dirs"]["FILE"]) / vol["path"]
    data = bytearray(image.read_bytes()[:4 << 20])
    at = data.find(b"LUKS\xba\xbe")
    assert at > 0, "qcow2 keeps a LUKS header"
    with open(image, "r+b") as f:
        f.seek(at)
        f.write(b"\0" * 512)
    from cs import CloudStackApiException
    with pytest.raises(CloudStackApiException) as e:
        api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    assert e.value.error["errorcode"] == 530 and "LUKS header is damaged" in e.value.error["errortext"], e.value.error
    listed = api.listVolumes(id=vol["id"])["volume"][0]
    assert listed["state"] == "Ready" and "virtualmachineid" not in listed
    assert "LUKS header is damaged" in listed["status"]
