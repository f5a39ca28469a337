"""The RBD pool adapter on a real one-node Ceph cluster (tests/cephcluster.py): the agent's commands for
images, copies to and from file pools, guests on RBD disks, base images and clones, native snapshots,
diff export and the heartbeat. Data is written and read back through librbd in the test process."""
import hashlib
import io
import os
import subprocess
import time
import uuid

import pytest

from volstack import errors
from volstack.agent import images
from volstack.agent.qmp import Qmp
from volstack.agent.rbd import RbdPool

from agentproc import wait_until

MiB = 1 << 20
pytestmark = pytest.mark.slow


@pytest.fixture
def rbd_spec(ceph):
    return ceph.spec(uuid=f"rbd-{uuid.uuid4().hex[:8]}")


def name(prefix="v"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def fill(spec, image, seed: int, mib: int, offset_mib: int = 0) -> str:
    """Write a pattern into an RBD image through librbd; returns its sha256."""
    data = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32) * mib
    with RbdPool(spec, "test").image(image) as img:
        img.write(data, offset_mib * MiB)
    return hashlib.sha256(data).hexdigest()


def digest(spec, image, mib: int, offset_mib: int = 0, snapshot=None) -> str:
    with RbdPool(spec, "test").image(image, snapshot=snapshot, read_only=True) as img:
        return hashlib.sha256(img.read(offset_mib * MiB, mib * MiB)).hexdigest()


def test_pool_and_volume_lifecycle_through_the_agent(agent, ceph, rbd_spec):
    c, vol = agent.client, name()
    st = c.call("pool_connect", pool=rbd_spec)
    assert st["capacity"] > 0 and st["available"] > 0, "capacity comes from Ceph (its mgr)"
    made = c.call("volume_create", pool=rbd_spec, name=vol, size=64 * MiB, format="raw")
    assert made["size"] == 64 * MiB
    assert ceph.image_info(vol)["size"] == 64 * MiB, "an RBD image named by the volume's path"
    assert c.call("volume_create", pool=rbd_spec, name=vol, size=64 * MiB, format="raw")["size"] == 64 * MiB
    assert c.call("volume_info", pool=rbd_spec, name=vol, format="raw")["format"] == "raw"
    with pytest.raises(errors.InvalidParameter, match="raw images only|holds raw"):
        c.call("volume_create", pool=rbd_spec, name=name(), size=MiB, format="qcow2")
    assert c.call("volume_resize", pool=rbd_spec, name=vol, size=128 * MiB, format="raw")["size"] == 128 * MiB
    assert ceph.image_info(vol)["size"] == 128 * MiB
    entries = {e["name"]: e for e in c.call("pool_list", pool=rbd_spec)["entries"]}
    assert entries[vol]["size"] == 128 * MiB and entries[vol]["format"] == "raw"
    c.call("volume_delete", pool=rbd_spec, name=vol)
    assert vol not in ceph.images()
    c.call("volume_delete", pool=rbd_spec, name=vol)          # deleting a missing image succeeds


@pytest.mark.parametrize("bad, match", [
    ("key", "refused cephx user"),
    ("monitor", "no Ceph monitor answered|cannot connect"),
    ("pool", "does not exist"),
])
def test_bad_pools_fail_in_seconds_with_the_reason(agent, ceph, rbd_spec, bad, match):
    spec = dict(rbd_spec)
    if bad == "key":
        spec["key"] = "AQAAAAAAAAAAABAA" + "A" * 22 + "=="
    elif bad == "monitor":
        spec["monitors"] = ["127.0.0.1:9"]        # nobody listens there
    else:
        spec["path"] = "no-such-pool"
    started = time.monotonic()
    with pytest.raises(errors.CloudError, match=match):
        agent.client.call("pool_connect", pool=spec)
    assert time.monotonic() - started < 15


def test_copy_file_to_rbd_and_back_keeps_the_bytes(agent, ceph, rbd_spec, pool, tmp_path):
    c, vol = agent.client, name()
    c.call("volume_create", pool=pool, name="src", size=16 * MiB, format="qcow2")
    c.call("volume_copy", src_pool=pool, src_name="src", dst_pool=rbd_spec, dst_name=vol, format="raw",
           src_format="qcow2")
    want = fill(rbd_spec, vol, seed=3, mib=4, offset_mib=2)
    c.call("volume_copy", src_pool=rbd_spec, src_name=vol, dst_pool=pool, dst_name="back", format="qcow2",
           src_format="raw")
    out = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", images.DirectoryPool(pool, "t").target("back"),
                    str(out)], check=True)
    with open(out, "rb") as f:
        f.seek(2 * MiB)
        assert hashlib.sha256(f.read(4 * MiB)).hexdigest() == want
    # RBD -> RBD inside one pool (one secret object for both ends)
    c.call("volume_copy", src_pool=rbd_spec, src_name=vol, dst_pool=rbd_spec, dst_name=vol + "-2", format="raw",
           src_format="raw")
    assert digest(rbd_spec, vol + "-2", 4, 2) == want
    assert not [i for i in ceph.images() if i.endswith(".part")], "no half-made copy is left"


def test_guest_gets_the_key_as_a_secret_object_and_sees_online_growth(agent, ceph, rbd_spec, pool):
    c, vol = agent.client, name()
    c.call("volume_create", pool=pool, name="root", size=16 * MiB, format="qcow2")
    c.call("volume_create", pool=rbd_spec, name=vol, size=32 * MiB, format="raw")
    vm = c.call("vm_start", name="vm-rbd", memory_mb=64, cpus=1, disks=[
        {"pool": pool, "name": "root", "format": "qcow2", "serial": "ROOT-1", "device_id": 0, "qos": None}])
    c.call("disk_attach", vm="vm-rbd", disk={"pool": rbd_spec, "name": vol, "format": "raw", "serial": "RBD-1",
                                             "device_id": 1, "qos": None})
    with Qmp(vm["monitor"]) as q:
        nodes = {b["node-name"]: b for b in q.execute("query-named-block-nodes")}
        assert any(n["drv"] == "rbd" for n in nodes.values())
    pid = agent.guest_pids()[0]
    assert ceph.key.encode() not in open(f"/proc/{pid}/cmdline", "rb").read(), "the key is never on a command line"
    assert c.call("disk_resize", vm="vm-rbd", serial="RBD-1", size=64 * MiB)["size"] == 64 * MiB
    assert ceph.image_info(vol)["size"] == 64 * MiB
    with pytest.raises(errors.CloudError, match="attached to running VM"):
        c.call("volume_delete", pool=rbd_spec, name=vol)
    c.call("disk_detach", vm="vm-rbd", serial="RBD-1")
    c.call("vm_destroy", name="vm-rbd")
    log = (agent.state_dir.parent / f"{agent.state_dir.name}-agent.log").read_bytes()
    assert ceph.key.encode() not in log, "the key is never logged"


def test_base_image_clone_chain_and_flatten(agent, ceph, rbd_spec, pool):
    c = agent.client
    c.call("volume_create", pool=pool, name="tmpl", size=8 * MiB, format="raw")
    base = name("base")
    made = c.call("rbd_base_import", pool=rbd_spec, name=base, src_pool=pool, src_name="tmpl", src_format="raw")
    assert made["created"] and made["snapshot"] == "volstack-base"
    assert not c.call("rbd_base_import", pool=rbd_spec, name=base, src_pool=pool, src_name="tmpl",
                      src_format="raw")["created"], \
        "the template is imported once"
    snaps = c.call("rbd_info", pool=rbd_spec, name=base)["snapshots"]
    assert snaps == [{"name": "volstack-base", "size": 8 * MiB, "protected": True}]
    root = name("root")
    clone = c.call("rbd_clone", pool=rbd_spec, parent=base, name=root, size=16 * MiB)
    assert clone["size"] == 16 * MiB and not clone["flattened"]
    info = ceph.image_info(root)
    assert info["parent"]["image"] == base and info["parent"]["snapshot"] == "volstack-base"
    # a clone of a clone's snapshot: depth 2, flattened when max_depth is 1
    c.call("rbd_snapshot_create", pool=rbd_spec, name=root, snapshot="s1")
    with RbdPool(rbd_spec, "t").image(root) as img:
        img.protect_snap("s1")
    deep = c.call("rbd_clone", pool=rbd_spec, parent=root, snapshot="s1", name=name("deep"), max_depth=1)
    assert deep["flattened"] and c.call("rbd_info", pool=rbd_spec, name=deep["path"])["depth"] == 0
    with pytest.raises(errors.CloudError, match="has 1 clone"):
        c.call("volume_delete", pool=rbd_spec, name=base)     # a base goes only once no clone needs it
    with pytest.raises(errors.CloudError, match="has snapshots"):
        c.call("volume_delete", pool=rbd_spec, name=root)     # a volume's own snapshots keep it
    with pytest.raises(errors.CloudError, match="clone"):
        c.call("rbd_snapshot_delete", pool=rbd_spec, name=base, snapshot="volstack-base")


def test_snapshot_rollback_and_diff_export(agent, ceph, rbd_spec, pool, tmp_path):
    c, vol = agent.client, name()
    c.call("volume_create", pool=rbd_spec, name=vol, size=16 * MiB, format="raw")
    a = fill(rbd_spec, vol, seed=1, mib=4)
    c.call("rbd_snapshot_create", pool=rbd_spec, name=vol, snapshot="s1")
    fill(rbd_spec, vol, seed=2, mib=4)
    fill(rbd_spec, vol, seed=9, mib=1, offset_mib=8)
    c.call("rbd_snapshot_create", pool=rbd_spec, name=vol, snapshot="s2")
    full = c.call("rbd_export_diff", pool=rbd_spec, name=vol, snapshot="s1", dst_pool=pool, dst_name="full.diff")
    inc = c.call("rbd_export_diff", pool=rbd_spec, name=vol, snapshot="s2", from_snapshot="s1", dst_pool=pool,
                 dst_name="inc.diff")
    assert full["data_bytes"] == 4 * MiB and inc["data_bytes"] == 5 * MiB, "only changed extents are exported"
    # `rbd import-diff` applies our files: the restored image equals the source at s2
    copy = name("restored")
    ceph.rbd("create", "--size", "16M", f"{ceph.pool}/{copy}")
    ceph.rbd("import-diff", os.path.join(pool["path"], "full.diff"), f"{ceph.pool}/{copy}")
    ceph.rbd("import-diff", os.path.join(pool["path"], "inc.diff"), f"{ceph.pool}/{copy}")
    assert digest(rbd_spec, copy, 16) == digest(rbd_spec, vol, 16, snapshot="s2")
    c.call("rbd_snapshot_rollback", pool=rbd_spec, name=vol, snapshot="s1")
    assert digest(rbd_spec, vol, 4) == a, "rolled back to s1"
    assert c.call("rbd_snapshot_delete", pool=rbd_spec, name=vol, snapshot="s1") == {"removed": True}
    assert c.call("rbd_snapshot_delete", pool=rbd_spec, name=vol, snapshot="s1") == {"removed": False}
    c.call("rbd_snapshot_delete", pool=rbd_spec, name=vol, snapshot="s2")
    c.call("volume_delete", pool=rbd_spec, name=vol)


def test_each_agent_writes_a_heartbeat_the_pool_shows(make_agent, ceph, rbd_spec):
    spec = dict(rbd_spec, heartbeat_seconds=1)
    a, b = make_agent(name="hb-a"), make_agent(name="hb-b")
    a.client.call("pool_stats", pool=spec)
    b.client.call("pool_stats", pool=spec)
    beats = wait_until("both heartbeats", lambda: (h := a.client.call("rbd_heartbeats", pool=spec)["hosts"])
                       and {"hb-a", "hb-b"} <= set(h) and h)
    first = beats["hb-b"]["time"]
    assert beats["hb-a"]["interval"] == 1
    wait_until("hb-b beats again", lambda: a.client.call("rbd_heartbeats", pool=spec)["hosts"]["hb-b"]["time"] > first)
    b.stop()
    stopped = a.client.call("rbd_heartbeats", pool=spec)["hosts"]["hb-b"]["time"]
    wait_until("hb-a goes on", lambda: a.client.call("rbd_heartbeats", pool=spec)["hosts"]["hb-a"]["time"] > stopped + 1.5)
    assert a.client.call("rbd_heartbeats", pool=spec)["hosts"]["hb-b"]["time"] == stopped, "a dead host stops beating"
    a.client.call("pool_disconnect", pool=spec)


def test_export_diff_format_in_memory(ceph, rbd_spec):
    """The diff stream itself: header, snapshot names, size, data and end records."""
    p = RbdPool(rbd_spec, "t")
    vol = name()
    p.make_image(vol, 8 * MiB, "raw")
    fill(rbd_spec, vol, seed=5, mib=1, offset_mib=1)
    p.snapshot_create(vol, "a")
    buf = io.BytesIO()
    assert MiB <= p.export_diff(vol, buf, "a") <= 4 * MiB, "at most the one 4 MiB object that was written"
    data = buf.getvalue()
    assert data.startswith(b"rbd diff v1\nt\x01\x00\x00\x00as") and data.endswith(b"e")
    p.snapshot_remove(vol, "a")
    p.remove(vol)


def test_live_mirror_file_to_rbd_and_back(agent, ceph, rbd_spec, pool):
    """An attached disk moves to RBD and back through QEMU's mirror (the path of a live migrateVolume)."""
    c, vol = agent.client, name()
    c.call("volume_create", pool=pool, name="root", size=16 * MiB, format="qcow2")
    c.call("volume_create", pool=pool, name="data", size=16 * MiB, format="qcow2")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 4M", os.path.join(pool["path"], "data")],
                   check=True, capture_output=True)
    c.call("vm_start", name="vm-mirror", memory_mb=64, cpus=1, disks=[
        {"pool": pool, "name": "root", "format": "qcow2", "serial": "ROOT-1", "device_id": 0, "qos": None},
        {"pool": pool, "name": "data", "format": "qcow2", "serial": "DATA-1", "device_id": 1, "qos": None}])
    moved = c.call("volume_mirror", vm="vm-mirror", serial="DATA-1", dst_pool=rbd_spec, dst_name=vol, format="raw")
    assert moved == {"path": vol, "serial": "DATA-1"}
    assert digest(rbd_spec, vol, 4, 1) == hashlib.sha256(b"\xab" * 4 * MiB).hexdigest()
    back = c.call("volume_mirror", vm="vm-mirror", serial="DATA-1", dst_pool=pool, dst_name="data2", format="qcow2")
    assert back["path"] == "data2"
    c.call("volume_delete", pool=rbd_spec, name=vol)     # no longer in use by the guest
    c.call("vm_destroy", name="vm-mirror")


def test_stuck_osds_fail_an_operation_in_seconds(make_agent, ceph, rbd_spec, monkeypatch):
    """A cluster that stops answering (OSD frozen with SIGSTOP) fails the command with the reason instead
    of blocking it: rados_osd_op_timeout (shortened here to 3 s)."""
    import signal
    monkeypatch.setenv("VOLSTACK_RBD_OSD_OP_TIMEOUT", "3")
    a = make_agent(name="stuck")
    a.client.call("pool_connect", pool=rbd_spec)
    osd = int(ceph.env["CEPH_OSD_PID"])
    os.kill(osd, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(errors.CloudError, match="did not answer|timed out"):
            a.client.call("volume_create", pool=rbd_spec, name=name(), size=MiB, format="raw")
        assert time.monotonic() - started < 20
    finally:
        os.kill(osd, signal.SIGCONT)
    a.client.call("volume_create", pool=rbd_spec, name=name(), size=MiB, format="raw")


def test_backup_chain_restores_into_rbd_and_file_pools(agent, ceph, rbd_spec, pool, tmp_path):
    """Snapshot backups as export-diff files: full, then only the changes; a diff from a snapshot the image no
    longer has becomes a full one; the chain restores into a new RBD image, in place over a volume (its own
    snapshots kept), and into a file pool as qcow2."""
    c, vol = agent.client, name()
    c.call("volume_create", pool=rbd_spec, name=vol, size=16 * MiB, format="raw")
    fill(rbd_spec, vol, seed=1, mib=4)
    c.call("rbd_snapshot_create", pool=rbd_spec, name=vol, snapshot="s1")
    full = c.call("rbd_export_diff", pool=rbd_spec, name=vol, snapshot="s1", from_snapshot="gone", dst_pool=pool,
                  dst_name="s1.rbddiff")
    assert full["full"] and full["data_bytes"] == 4 * MiB and full["size"] == 16 * MiB
    fill(rbd_spec, vol, seed=2, mib=1, offset_mib=9)
    with RbdPool(rbd_spec, "t").image(vol) as img:
        img.write_zeroes(MiB, MiB)                   # a discard in the guest: a zero record in the diff
    c.call("rbd_snapshot_create", pool=rbd_spec, name=vol, snapshot="s2")
    inc = c.call("rbd_export_diff", pool=rbd_spec, name=vol, snapshot="s2", from_snapshot="s1", dst_pool=pool,
                 dst_name="s2.rbddiff")
    assert not inc["full"] and inc["data_bytes"] <= 4 * MiB and inc["physical_size"] < full["physical_size"]
    at_s2 = digest(rbd_spec, vol, 16, snapshot="s2")
    chain = [{"pool": pool, "name": "s1.rbddiff"}, {"pool": pool, "name": "s2.rbddiff"}]
    new = name("new")
    made = c.call("rbd_restore", chain=chain, dst_pool=rbd_spec, dst_name=new)
    assert made["size"] == 16 * MiB and digest(rbd_spec, new, 16) == at_s2
    fill(rbd_spec, vol, seed=3, mib=16)             # the volume changes completely, then is restored in place
    c.call("rbd_restore", chain=chain[:1], dst_pool=rbd_spec, dst_name=vol, replace=True)
    assert digest(rbd_spec, vol, 16) == digest(rbd_spec, vol, 16, snapshot="s1")
    assert {s["name"] for s in c.call("rbd_info", pool=rbd_spec, name=vol)["snapshots"]} == {"s1", "s2"}
    c.call("rbd_restore", chain=chain, dst_pool=pool, dst_name="file.qcow2", format="qcow2")
    out = tmp_path / "file.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", os.path.join(pool["path"], "file.qcow2"),
                    str(out)], check=True)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == at_s2
    # a qcow2 backup (a file pool's snapshot) written over an RBD volume in place
    c.call("rbd_restore", src_pool=pool, src_name="file.qcow2", src_format="qcow2", dst_pool=rbd_spec,
           dst_name=vol, replace=True)
    assert digest(rbd_spec, vol, 16) == at_s2
    # a clone of a volume snapshot; purging the volume's snapshots flattens it first
    clone = c.call("rbd_clone", pool=rbd_spec, parent=vol, snapshot="s2", name=name("clone"))
    assert ceph.image_info(clone["path"])["parent"]["snapshot"] == "s2"
    assert sorted(c.call("rbd_snapshot_purge", pool=rbd_spec, name=vol)["removed"]) == ["s1", "s2"]
    assert "parent" not in ceph.image_info(clone["path"]) and digest(rbd_spec, clone["path"], 16) == at_s2
    c.call("volume_delete", pool=rbd_spec, name=vol)
    assert not [i for i in ceph.images() if i.startswith(".")], "no half-made image is left"


def test_backups_on_an_nfs_image_store(agent, ceph, rbd_spec, nfs_pool):
    """A store reached only through qemu-img's nfs driver: the diff files are written and read back byte for
    byte through the agent's work directory, and the chain restores from there."""
    nfs, export_dir = nfs_pool
    c, vol = agent.client, name()
    c.call("volume_create", pool=rbd_spec, name=vol, size=16 * MiB, format="raw")
    fill(rbd_spec, vol, seed=7, mib=3)
    c.call("rbd_snapshot_create", pool=rbd_spec, name=vol, snapshot="s1")
    fill(rbd_spec, vol, seed=8, mib=1, offset_mib=12)
    c.call("rbd_snapshot_create", pool=rbd_spec, name=vol, snapshot="s2")
    c.call("rbd_export_diff", pool=rbd_spec, name=vol, snapshot="s1", dst_pool=nfs, dst_name="s1.rbddiff")
    inc = c.call("rbd_export_diff", pool=rbd_spec, name=vol, snapshot="s2", from_snapshot="s1", dst_pool=nfs,
                 dst_name="s2.rbddiff")
    assert inc["data_bytes"] == MiB and (export_dir / "s2.rbddiff").stat().st_size >= inc["physical_size"]
    copy = name("from-nfs")
    c.call("rbd_restore", chain=[{"pool": nfs, "name": "s1.rbddiff"}, {"pool": nfs, "name": "s2.rbddiff"}],
           dst_pool=rbd_spec, dst_name=copy)
    assert digest(rbd_spec, copy, 16) == digest(rbd_spec, vol, 16, snapshot="s2")
    assert not list((agent.state_dir / "rbd-work").iterdir()), "the staged copies are removed"
    c.call("rbd_snapshot_purge", pool=rbd_spec, name=vol)
    c.call("volume_delete", pool=rbd_spec, name=vol)
