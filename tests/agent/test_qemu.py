"""The qemu hypervisor adapter on real QEMU: guest-less VMs (paused, KVM where it works), driven by the agent
and checked through QEMU's second monitor socket."""
import os
import signal

import pytest

from volstack import errors
from volstack.agent.qmp import Qmp

from agentproc import wait_until

MiB = 1 << 20
QOS = {"iops_rd": 200, "iops_wr": 100, "bps_rd": 8 * MiB, "bps_wr": 4 * MiB, "iops_wr_max": 300,
       "iops_wr_max_length": 5, "bps_wr_max": 8 * MiB}


def disk(pool, name, serial, device_id, fmt="qcow2", qos=None):
    return {"pool": pool, "name": name, "format": fmt, "serial": serial, "device_id": device_id, "qos": qos}


def blocks(vm):
    """{serial: query-block entry} of the VM's disks, read through its second monitor (the CD drive every
    guest has is left out: see cdrom())."""
    with Qmp(vm["monitor"]) as q:
        out = {}
        for b in q.execute("query-block"):
            if b["qdev"] == "cd0":
                continue
            dev = b["qdev"].split("/")[3] if b["qdev"].startswith("/machine") else b["qdev"]
            out[q.execute("qom-get", {"path": f"/machine/peripheral/{dev}", "property": "serial"})] = b
        return out


@pytest.fixture
def vm(agent, pool):
    c = agent.client
    c.call("volume_create", pool=pool, name="root", size=64 * MiB, format="qcow2")
    c.call("volume_create", pool=pool, name="data", size=32 * MiB, format="raw")
    started = c.call("vm_start", name="vm1", uuid="0b9a9d1e-3f0f-4c9e-8d4e-3f1a2b3c4d5e", memory_mb=64, cpus=1,
                     disks=[disk(pool, "root", "ROOT-1", 0), disk(pool, "data", "DATA-1", 1, "raw", QOS)])
    assert started["state"] == "Running" and started["disks"] == ["ROOT-1", "DATA-1"]
    return started


def test_start_list_and_qos_at_start(agent, vm, pool):
    assert agent.client.call("vm_list") == {"vms": [vm]}
    b = blocks(vm)
    assert set(b) == {"ROOT-1", "DATA-1"}
    data = b["DATA-1"]["inserted"]
    assert (data["iops_rd"], data["iops_wr"], data["bps_rd"], data["bps_wr"]) == (200, 100, 8 * MiB, 4 * MiB)
    assert (data["iops_wr_max"], data["iops_wr_max_length"], data["bps_wr_max"]) == (300, 5, 8 * MiB)
    assert b["ROOT-1"]["inserted"]["iops_wr"] == 0 and b["ROOT-1"]["inserted"]["image"]["format"] == "qcow2"
    with Qmp(vm["monitor"]) as q:
        assert q.execute("query-status")["status"] == "prelaunch"        # no OS: paused
        assert q.execute("query-uuid")["UUID"] == "0b9a9d1e-3f0f-4c9e-8d4e-3f1a2b3c4d5e"
    # starting a running VM again with the same disks changes nothing; with other disks it is refused
    same = [disk(pool, "root", "ROOT-1", 0), disk(pool, "data", "DATA-1", 1, "raw", QOS)]
    assert agent.client.call("vm_start", name="vm1", memory_mb=64, cpus=1, disks=same) == {**vm, "adopted": True}
    with pytest.raises(errors.ResourceInUse, match=r"already running on host .* it has disks \[DATA-1=.*ROOT-1=.*\], "
                                                   r"the start asks for \[\]"):
        agent.client.call("vm_start", name="vm1", memory_mb=64, cpus=1, disks=[])


def test_hotplug_qos_resize_stats_detach(agent, vm, pool):
    c = agent.client
    c.call("volume_create", pool=pool, name="extra", size=16 * MiB, format="qcow2")
    extra = disk(pool, "extra", "EXTRA-1", 2)
    attached = c.call("disk_attach", vm="vm1", disk=extra)
    assert c.call("disk_attach", vm="vm1", disk=extra) == attached            # idempotent
    with pytest.raises(errors.InvalidParameter, match="another disk with serial"):
        c.call("disk_attach", vm="vm1", disk={**extra, "name": "data"})
    assert blocks(vm)["EXTRA-1"]["inserted"]["file"] == os.path.join(pool["path"], "extra")
    assert c.call("vm_list")["vms"][0]["disks"] == ["ROOT-1", "DATA-1", "EXTRA-1"]

    c.call("disk_set_qos", vm="vm1", serial="EXTRA-1", qos={"bps_rd": 2 * MiB, "bps_rd_max": 4 * MiB})
    ins = blocks(vm)["EXTRA-1"]["inserted"]
    assert (ins["bps_rd"], ins["bps_rd_max"], ins["iops_wr"]) == (2 * MiB, 4 * MiB, 0)
    c.call("disk_set_qos", vm="vm1", serial="DATA-1", qos={k: 0 for k in QOS})   # zeros clear
    ins = blocks(vm)["DATA-1"]["inserted"]
    assert (ins["iops_rd"], ins["iops_wr"], ins["bps_rd"], ins["bps_wr"]) == (0, 0, 0, 0)
    with pytest.raises(errors.InvalidParameter, match="needs iops_wr"):
        c.call("disk_set_qos", vm="vm1", serial="DATA-1", qos={"iops_wr_max": 10})
    with pytest.raises(errors.NotFound, match="no disk with serial"):
        c.call("disk_set_qos", vm="vm1", serial="NOPE", qos={})

    assert c.call("disk_resize", vm="vm1", serial="EXTRA-1", size=48 * MiB) == {"size": 48 * MiB}
    assert blocks(vm)["EXTRA-1"]["inserted"]["image"]["virtual-size"] == 48 * MiB
    with pytest.raises(errors.InvalidParameter, match="cannot shrink"):
        c.call("disk_resize", vm="vm1", serial="EXTRA-1", size=16 * MiB)

    stats = c.call("disk_stats", vm="vm1")["disks"]
    assert set(stats) == {"ROOT-1", "DATA-1", "EXTRA-1"}
    assert set(stats["DATA-1"]) == {"rd_ops", "wr_ops", "rd_bytes", "wr_bytes"}

    with pytest.raises(errors.ResourceInUse, match="attached to running VM vm1"):
        c.call("volume_delete", pool=pool, name="extra")
    assert c.call("disk_detach", vm="vm1", serial="EXTRA-1") == {}
    assert "EXTRA-1" not in blocks(vm)
    with Qmp(vm["monitor"]) as q:
        assert "extra" not in str(q.execute("query-named-block-nodes"))     # the image is closed
    assert c.call("disk_detach", vm="vm1", serial="EXTRA-1") == {}          # already gone
    assert c.call("volume_delete", pool=pool, name="extra") == {}


def test_restarted_agent_readopts_running_guests(agent, vm, pool):
    pid = agent.guest_pids()[0]
    agent.restart(signal.SIGKILL)
    assert agent.guest_pids() == [pid]
    assert agent.client.call("vm_list") == {"vms": [vm]}
    c = agent.client
    c.call("volume_create", pool=pool, name="late", size=MiB, format="qcow2")
    c.call("disk_attach", vm="vm1", disk=disk(pool, "late", "LATE-1", 2))
    assert set(blocks(vm)) == {"ROOT-1", "DATA-1", "LATE-1"}
    agent.restart(signal.SIGTERM)                     # a clean stop leaves guests running too
    assert agent.client.call("vm_list")["vms"][0]["state"] == "Running"


def test_stop_start_reboot_destroy(agent, vm, pool):
    c = agent.client
    assert c.call("vm_reboot", name="vm1") == {}
    pid = agent.guest_pids()[0]
    assert c.call("vm_stop", name="vm1") == {"forced": False}
    assert not os.path.exists(f"/proc/{pid}/cmdline") or b"qemu" not in open(f"/proc/{pid}/cmdline", "rb").read()
    assert c.call("vm_list")["vms"][0]["state"] == "Stopped"
    assert c.call("vm_stop", name="vm1") == {"forced": False}                 # already stopped
    assert c.call("volume_delete", pool=pool, name="data") == {}            # no longer in use
    with pytest.raises(errors.NotFound, match="volume data does not exist"):
        c.call("vm_start", name="vm1", memory_mb=64, cpus=1, disks=[disk(pool, "data", "DATA-1", 1, "raw")])
    again = c.call("vm_start", name="vm1", memory_mb=64, cpus=1, disks=[disk(pool, "root", "ROOT-1", 0)])
    assert again["state"] == "Running" and again["disks"] == ["ROOT-1"]
    assert c.call("vm_stop", name="vm1", forced=True) == {"forced": False}
    with pytest.raises(errors.ResourceUnavailable, match="not running"):
        c.call("vm_reboot", name="vm1")
    assert c.call("vm_destroy", name="vm1") == {} and c.call("vm_list") == {"vms": []}
    assert c.call("vm_destroy", name="vm1") == {}
    with pytest.raises(errors.NotFound):
        c.call("vm_reboot", name="vm1")


def test_a_guest_that_died_is_stopped(agent, vm):
    pid = agent.guest_pids()[0]
    os.kill(pid, signal.SIGKILL)
    wait_until("the guest to be gone", lambda: agent.client.call("vm_list")["vms"][0]["state"] == "Stopped")
    assert agent.client.call("disk_stats", vm="vm1") == {"disks": {}}


def test_bad_guest_specs(agent, pool):
    c = agent.client
    with pytest.raises(errors.InvalidParameter, match="memory_mb"):
        c.call("vm_start", name="vm1", memory_mb=0, cpus=1, disks=[])
    with pytest.raises(errors.InvalidParameter, match="kernel"):
        c.call("vm_start", name="vm1", memory_mb=64, cpus=1, kernel="/no/such/vmlinuz", disks=[])
    with pytest.raises(errors.InvalidParameter, match="serial"):
        c.call("vm_start", name="vm1", memory_mb=64, cpus=1, disks=[disk(pool, "x", "a" * 21, 0)])
    with pytest.raises(errors.InvalidParameter, match="same serial"):
        c.call("vm_start", name="vm1", memory_mb=64, cpus=1, disks=[disk(pool, "x", "S", 0), disk(pool, "y", "S", 1)])
    with pytest.raises(errors.InvalidParameter, match="unknown qos"):
        c.call("vm_start", name="vm1", memory_mb=64, cpus=1, disks=[disk(pool, "x", "S", 0, qos={"iops": 5})])
    with pytest.raises(errors.NotFound, match="no VM"):
        c.call("disk_attach", vm="ghost", disk=disk(pool, "x", "S", 0))
    assert c.call("vm_list") == {"vms": []}


def test_live_mirror_to_another_pool(agent, vm, pool, pool2):
    c = agent.client
    seen = []
    task = c.call_async("volume_mirror", vm="vm1", serial="DATA-1", dst_pool=pool2, dst_name="data-moved",
                        format="qcow2")
    assert c.wait_task(task, progress_cb=seen.append) == {"path": "data-moved", "serial": "DATA-1"}
    assert seen[-1] == 100
    b = blocks(vm)["DATA-1"]["inserted"]
    assert b["file"] == os.path.join(pool2["path"], "data-moved") and b["image"]["format"] == "qcow2"
    assert b["iops_wr"] == 100                             # the throttle stayed with the device
    with Qmp(vm["monitor"]) as q:
        assert q.execute("query-jobs") == []
        assert os.path.join(pool["path"], "data") not in str(q.execute("query-named-block-nodes"))
    assert c.call("vm_list")["vms"][0]["disks"] == ["ROOT-1", "DATA-1"]
    # the old image is free now, the new one is in use
    assert c.call("volume_delete", pool=pool, name="data") == {}
    with pytest.raises(errors.ResourceInUse):
        c.call("volume_delete", pool=pool2, name="data-moved")
    # and the disk can still be changed and detached under its serial
    c.call("disk_resize", vm="vm1", serial="DATA-1", size=64 * MiB)
    assert blocks(vm)["DATA-1"]["inserted"]["image"]["virtual-size"] == 64 * MiB
    c.call("disk_detach", vm="vm1", serial="DATA-1")
    assert set(blocks(vm)) == {"ROOT-1"}


@pytest.mark.slow
def test_mirror_interrupted_by_an_agent_restart_is_rolled_back(agent, pool, pool2):
    c = agent.client
    c.call("volume_create", pool=pool, name="big", size=64 * MiB, format="raw")
    with open(os.path.join(pool["path"], "big"), "r+b") as f:
        f.write(b"\x5a" * (48 * MiB))
    vm = c.call("vm_start", name="vm1", memory_mb=64, cpus=1, disks=[disk(pool, "big", "BIG", 0, "raw")])
    task = c.call_async("volume_mirror", vm="vm1", serial="BIG", dst_pool=pool2, dst_name="big-moved",
                        format="raw", speed=8 * MiB)
    wait_until("the mirror to make progress", lambda: c.task(task)["progress"] > 0)
    agent.restart(signal.SIGKILL)
    assert agent.client.task(task) == {"state": "failed", "progress": agent.client.task(task)["progress"],
                                       "error": "agent restarted", "kind": "Failed"}
    with Qmp(vm["monitor"]) as q:
        assert q.execute("query-jobs") == []                       # the job was cancelled
        assert "big-moved" not in str(q.execute("query-named-block-nodes"))
    assert blocks(vm)["BIG"]["inserted"]["file"] == os.path.join(pool["path"], "big")
    assert os.listdir(pool2["path"]) == []
    # and a new attempt goes through
    task = agent.client.call_async("volume_mirror", vm="vm1", serial="BIG", dst_pool=pool2, dst_name="big-moved",
                                   format="raw")
    assert agent.client.wait_task(task) == {"path": "big-moved", "serial": "BIG"}
    assert blocks(vm)["BIG"]["inserted"]["file"] == os.path.join(pool2["path"], "big-moved")


@pytest.mark.slow
def test_cancel_mirror_stops_an_unfinished_mirror_and_says_where_the_disk_is(agent, pool, pool2):
    """What a management server settling a live migrateVolume whose job died with it asks the host."""
    c = agent.client
    c.call("volume_create", pool=pool, name="big", size=64 * MiB, format="raw")
    with open(os.path.join(pool["path"], "big"), "r+b") as f:
        f.write(b"\x5a" * (48 * MiB))
    vm = c.call("vm_start", name="vm1", memory_mb=64, cpus=1, disks=[disk(pool, "big", "BIG", 0, "raw")])
    here = {"pool_uuid": pool["uuid"], "name": "big", "format": "raw"}
    task = c.call_async("volume_mirror", vm="vm1", serial="BIG", dst_pool=pool2, dst_name="big-moved",
                        format="raw", speed=4 * MiB)
    wait_until("the mirror to make progress", lambda: c.task(task)["progress"] > 0)
    assert c.call("volume_mirror_cancel", vm="vm1", serial="BIG") == here
    done = c.task(task)
    assert done["state"] == "failed" and "management server" in done["error"]
    with Qmp(vm["monitor"]) as q:
        assert q.execute("query-jobs") == []
        assert "big-moved" not in str(q.execute("query-named-block-nodes"))
    assert blocks(vm)["BIG"]["inserted"]["file"] == os.path.join(pool["path"], "big")
    assert os.listdir(pool2["path"]) == [], "the half-made copy is removed"
    # a mirror that switched before the question: the disk is on the copy
    assert c.call("volume_mirror", vm="vm1", serial="BIG", dst_pool=pool2, dst_name="big-moved",
                  format="raw") == {"path": "big-moved", "serial": "BIG"}
    assert c.call("volume_mirror_cancel", vm="vm1", serial="BIG") == {**here, "pool_uuid": pool2["uuid"],
                                                                        "name": "big-moved"}
    with pytest.raises(errors.NotFound):
        c.call("volume_mirror_cancel", vm="vm1", serial="NOPE")
