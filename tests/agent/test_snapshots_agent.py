"""Snapshot commands of the agent on real QEMU: a live, point-in-time copy of a running guest's disk while
writes go on (QMP blockdev-backup), and internal qcow2 snapshots of idle volumes."""
import os
import subprocess

import pytest

from volstack import errors
from volstack.agent.qmp import Qmp

from agentproc import wait_until

MiB = 1 << 20


def qemu_io(path, cmd, fmt="qcow2"):
    ro = ["-r", "-U"] if cmd.startswith("read") else []
    r = subprocess.run(["qemu-io", *ro, "-f", fmt, "-c", cmd, str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr


def guest_io(vm, device, cmd):
    """I/O through the running QEMU's own block layer (HMP qemu-io), as a guest's writes would be."""
    with Qmp(vm["monitor"]) as q:
        out = q.execute("human-monitor-command", {"command-line": f'qemu-io -d {device} "{cmd}"'})
    assert "Pattern verification failed" not in out and "error" not in out.lower(), out
    return out


def backup_jobs(vm):
    with Qmp(vm["monitor"]) as q:
        return [j for j in q.execute("query-jobs") if j["id"].startswith("backup-")]


def test_live_snapshot_is_point_in_time_while_the_guest_writes(agent, pool, pool2):
    c = agent.client
    c.call("volume_create", pool=pool, name="data", size=16 * MiB, format="qcow2")
    qemu_io(os.path.join(pool["path"], "data"), "write -P 0x11 0 8M")
    vm = c.call("vm_start", name="vm1", uuid="0b9a9d1e-3f0f-4c9e-8d4e-3f1a2b3c4d5e", memory_mb=64, cpus=1,
                disks=[{"pool": pool, "name": "data", "format": "qcow2", "serial": "DATA-1", "device_id": 0}])
    with pytest.raises(errors.ResourceInUse):          # an in-use image is never snapshotted behind QEMU's back
        c.call("snapshot_take", pool=pool, name="data", format="qcow2", snapshot="snap-a")
    # the copy is throttled so that the guest's writes land while the backup job runs
    task = c.call_async("snapshot_take", pool=pool, name="data", format="qcow2", snapshot="snap-a", vm="vm1",
                        serial="DATA-1", speed=4 * MiB)
    wait_until("the backup job to start", lambda: backup_jobs(vm), timeout=10)
    guest_io(vm, "disk0", "write -P 0x22 0 8M")
    assert [j["status"] for j in backup_jobs(vm)] == ["running"]     # the writes came before the copy ended
    taken = c.wait_task(task)
    assert {k: taken[k] for k in ("kind", "name", "size", "incremental")} == \
        {"kind": "file", "name": "snap-a.qcow2", "size": 16 * MiB, "incremental": False}
    guest_io(vm, "disk0", "read -P 0x22 0 8M")
    qemu_io(os.path.join(pool["path"], "snap-a.qcow2"), "read -P 0x11 0 8M")
    with Qmp(vm["monitor"]) as q:                       # nothing of the backup is left in the guest
        assert q.execute("query-jobs") == []
        assert "snap-a" not in str(q.execute("query-named-block-nodes"))
    res = c.call("snapshot_backup", pool=pool, name="data", format="qcow2", kind="file", primary="snap-a.qcow2",
                 dst_pool=pool2, dst_name="a.qcow2")
    assert res["size"] == 16 * MiB
    qemu_io(os.path.join(pool2["path"], "a.qcow2"), "read -P 0x11 0 8M")
    assert c.call("snapshot_delete_primary", pool=pool, name="data", kind="file", primary="snap-a.qcow2") == \
        {"removed": True}
    assert not os.path.exists(os.path.join(pool["path"], "snap-a.qcow2"))
    with pytest.raises(errors.ResourceInUse):
        c.call("snapshot_revert", pool=pool, name="data", format="qcow2", src_pool=pool2, src_name="a.qcow2")
    c.call("vm_stop", name="vm1", forced=True)
    c.call("snapshot_revert", pool=pool, name="data", format="qcow2", src_pool=pool2, src_name="a.qcow2")
    qemu_io(os.path.join(pool["path"], "data"), "read -P 0x11 0 8M")


def test_internal_snapshot_of_an_idle_volume(agent, pool, pool2):
    c = agent.client
    c.call("volume_create", pool=pool, name="idle", size=8 * MiB, format="qcow2")
    image = os.path.join(pool["path"], "idle")
    qemu_io(image, "write -P 0x33 0 1M")
    args = dict(pool=pool, name="idle", format="qcow2", snapshot="snap-b")
    assert c.call("snapshot_take", **args) == {"kind": "internal", "name": "snap-b", "size": 8 * MiB, "incremental": False}
    assert c.call("snapshot_take", **args)["kind"] == "internal"          # idempotent
    qemu_io(image, "write -P 0x44 0 1M")
    c.call("snapshot_backup", pool=pool, name="idle", format="qcow2", kind="internal", primary="snap-b",
           dst_pool=pool2, dst_name="b.qcow2")
    qemu_io(os.path.join(pool2["path"], "b.qcow2"), "read -P 0x33 0 1M")
    assert c.call("snapshot_delete_primary", pool=pool, name="idle", kind="internal", primary="snap-b") == \
        {"removed": True}
    assert c.call("snapshot_delete_primary", pool=pool, name="idle", kind="internal", primary="snap-b") == \
        {"removed": False}
    qemu_io(image, "read -P 0x44 0 1M")


def bitmaps(path):
    import json
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True,
                         text=True).stdout
    return [b["name"] for b in json.loads(out)["format-specific"]["data"].get("bitmaps") or []]


def test_incremental_copies_carry_only_the_changes_live_and_idle(agent, pool, pool2):
    """A chain full <- live delta <- idle delta on the 'store' (pool2): each delta holds only what was written
    since its parent, reads back as the whole disk, and a lost or unusable bitmap gives a full copy instead."""
    c = agent.client
    image = os.path.join(pool["path"], "data")
    store = lambda n: os.path.join(pool2["path"], n)       # noqa: E731
    c.call("volume_create", pool=pool, name="data", size=32 * MiB, format="qcow2")
    qemu_io(image, "write -P 0x11 0 16M")
    full = c.call("snapshot_take", pool=pool, name="data", format="qcow2", snapshot="snap-1", bitmap="volstack-1")
    assert full["kind"] == "internal" and bitmaps(image) == ["volstack-1"]
    c.call("snapshot_backup", pool=pool, name="data", format="qcow2", kind="internal", primary="snap-1",
           dst_pool=pool2, dst_name="1.qcow2")

    vm = c.call("vm_start", name="vm1", uuid="0b9a9d1e-3f0f-4c9e-8d4e-3f1a2b3c4d5f", memory_mb=64, cpus=1,
                disks=[{"pool": pool, "name": "data", "format": "qcow2", "serial": "DATA-1", "device_id": 0}])
    guest_io(vm, "disk0", "write -P 0x22 1M 256k")                 # tracked by the bitmap QEMU loaded
    live = c.call("snapshot_take", pool=pool, name="data", format="qcow2", snapshot="snap-2", vm="vm1",
                  serial="DATA-1", bitmap="volstack-2", parent={"bitmap": "volstack-1", "backing": "1.qcow2"})
    assert (live["kind"], live["incremental"]) == ("delta", True)
    two = c.call("snapshot_backup", pool=pool, name="data", format="qcow2", kind="delta", primary="snap-2.qcow2",
                 dst_pool=pool2, dst_name="2.qcow2")
    assert two["backing"] == "1.qcow2" and two["physical_size"] < 2 * MiB
    guest_io(vm, "disk0", "write -P 0x33 2M 64k")
    c.call("vm_stop", name="vm1")                                  # QEMU stores the bitmap as it closes the image
    assert bitmaps(image) == ["volstack-2"]

    idle = c.call("snapshot_take", pool=pool, name="data", format="qcow2", snapshot="snap-3", bitmap="volstack-3",
                  parent={"bitmap": "volstack-2", "backing": "2.qcow2"})
    assert (idle["kind"], idle["incremental"]) == ("delta", True) and bitmaps(image) == ["volstack-3"]
    three = c.call("snapshot_backup", pool=pool, name="data", format="qcow2", kind="delta", primary="snap-3.qcow2",
                   dst_pool=pool2, dst_name="3.qcow2")
    assert three["backing"] == "2.qcow2" and three["physical_size"] < MiB
    for cmd in ("read -P 0x11 0 1M", "read -P 0x22 1M 256k", "read -P 0x11 1280k 768k", "read -P 0x33 2M 64k",
                "read -P 0x11 3M 13M"):
        qemu_io(store("3.qcow2"), cmd)
    qemu_io(store("2.qcow2"), "read -P 0x11 2M 64k")

    # the middle backup goes: 3 (smaller) is committed into 2, whose file becomes 3's (its backing is 1)
    merged = c.call("snapshot_merge", pool=pool2, name="3.qcow2", parent="2.qcow2", backing="1.qcow2")
    assert merged["backing"] == "1.qcow2" and not os.path.exists(store("2.qcow2"))
    assert c.call("snapshot_merge", pool=pool2, name="3.qcow2", parent="2.qcow2", backing="1.qcow2") == merged
    for cmd in ("read -P 0x11 0 1M", "read -P 0x22 1M 256k", "read -P 0x33 2M 64k", "read -P 0x11 3M 13M"):
        qemu_io(store("3.qcow2"), cmd)
    # the full one goes: 3 is committed into it and takes its place, a full backup now
    assert c.call("snapshot_merge", pool=pool2, name="3.qcow2", parent="1.qcow2")["backing"] is None
    assert not os.path.exists(store("1.qcow2"))
    for cmd in ("read -P 0x22 1M 256k", "read -P 0x33 2M 64k", "read -P 0x11 3M 13M"):
        qemu_io(store("3.qcow2"), cmd)
    # a child bigger than its parent takes the parent's data in instead (rebase); the parent stays untouched
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", store("small"), "8M"], check=True)
    qemu_io(store("small"), "write -P 0x55 0 64k")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "small", "-F", "qcow2", store("big")], check=True)
    qemu_io(store("big"), "write -P 0x66 1M 4M")
    assert c.call("snapshot_merge", pool=pool2, name="big", parent="small")["backing"] is None
    qemu_io(store("big"), "read -P 0x55 0 64k")
    qemu_io(store("big"), "read -P 0x66 1M 4M")
    qemu_io(store("small"), "read -P 0 1M 4M")

    # no usable parent bitmap: a full copy, never a wrong delta
    again = c.call("snapshot_take", pool=pool, name="data", format="qcow2", snapshot="snap-4", bitmap="volstack-4",
                   parent={"bitmap": "volstack-9", "backing": "3.qcow2"})
    assert (again["kind"], again["incremental"]) == ("internal", False) and bitmaps(image) == ["volstack-4"]
    vm = c.call("vm_start", name="vm1", uuid="0b9a9d1e-3f0f-4c9e-8d4e-3f1a2b3c4d5f", memory_mb=64, cpus=1,
                disks=[{"pool": pool, "name": "data", "format": "qcow2", "serial": "DATA-1", "device_id": 0}])
    guest_io(vm, "disk0", "write -P 0x44 0 64k")
    agent.kill_guests()                     # QEMU dies with the image open: the bitmap no longer covers every write
    wait_until("the killed guest gone", lambda: c.call("vm_list")["vms"][0]["state"] == "Stopped")
    lost = c.call("snapshot_take", pool=pool, name="data", format="qcow2", snapshot="snap-5", bitmap="volstack-5",
                  parent={"bitmap": "volstack-4", "backing": "3.qcow2"})
    assert (lost["kind"], lost["incremental"]) == ("internal", False) and bitmaps(image) == ["volstack-5"]


def test_a_live_copy_cut_by_an_agent_crash_leaves_nothing_in_the_guest_that_blocks_the_next(agent, pool):
    c = agent.client
    c.call("volume_create", pool=pool, name="data", size=16 * MiB, format="qcow2")
    qemu_io(os.path.join(pool["path"], "data"), "write -P 0x11 0 16M")
    vm = c.call("vm_start", name="vm1", uuid="0b9a9d1e-3f0f-4c9e-8d4e-3f1a2b3c4d60", memory_mb=64, cpus=1,
                disks=[{"pool": pool, "name": "data", "format": "qcow2", "serial": "DATA-1", "device_id": 0}])
    task = c.call_async("snapshot_take", pool=pool, name="data", format="qcow2", snapshot="snap-a", vm="vm1",
                        serial="DATA-1", speed=MiB, bitmap="volstack-a")
    wait_until("the backup job to start", lambda: backup_jobs(vm), timeout=10)
    agent.restart()
    c = agent.client
    with pytest.raises(errors.CloudError):
        c.wait_task(task)                                 # failed: agent restarted
    taken = c.call("snapshot_take", pool=pool, name="data", format="qcow2", snapshot="snap-b", vm="vm1",
                   serial="DATA-1", bitmap="volstack-b")
    assert taken["kind"] == "file"
    qemu_io(os.path.join(pool["path"], "snap-b.qcow2"), "read -P 0x11 0 16M")
    with Qmp(vm["monitor"]) as q:
        assert q.execute("query-jobs") == []
        assert not [n for n in q.execute("query-named-block-nodes") if ".part" in (n.get("file") or "")]
    assert sorted(os.listdir(pool["path"])) == ["data", "snap-b.qcow2"]


def test_a_live_copy_goes_straight_to_the_store_when_it_is_reachable(agent, pool, pool2, tmp_path):
    c = agent.client
    c.call("volume_create", pool=pool, name="data", size=16 * MiB, format="qcow2")
    qemu_io(os.path.join(pool["path"], "data"), "write -P 0x11 0 4M")
    c.call("vm_start", name="vm1", uuid="0b9a9d1e-3f0f-4c9e-8d4e-3f1a2b3c4d61", memory_mb=64, cpus=1,
           disks=[{"pool": pool, "name": "data", "format": "qcow2", "serial": "DATA-1", "device_id": 0}])
    args = dict(pool=pool, name="data", format="qcow2", vm="vm1", serial="DATA-1")
    taken = c.call("snapshot_take", snapshot="snap-a", dst_pool=pool2, dst_name="a.qcow2", **args)
    assert (taken["kind"], taken["name"]) == ("stored", "a.qcow2") and sorted(os.listdir(pool["path"])) == ["data"]
    qemu_io(os.path.join(pool2["path"], "a.qcow2"), "read -P 0x11 0 4M")
    assert c.call("snapshot_take", snapshot="snap-a", dst_pool=pool2, dst_name="a.qcow2", **args) == taken
    gone = {"uuid": "gone", "type": "Filesystem", "path": str(tmp_path / "no-such-store")}
    kept = c.call("snapshot_take", snapshot="snap-b", dst_pool=gone, dst_name="b.qcow2", **args)
    assert (kept["kind"], kept["name"]) == ("file", "snap-b.qcow2")       # the store is away: kept on primary
