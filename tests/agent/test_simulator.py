"""The simulator hypervisor: the qemu adapter's checks and bookkeeping without QEMU, kept across restarts."""
import os

import pytest

from volstack import errors

from agentproc import wait_until

MiB = 1 << 20


def test_simulated_guests(sim_agent, pool, pool2):
    c = sim_agent.client
    assert c.hello()["hypervisor"] == "simulator"
    c.call("volume_create", pool=pool, name="root", size=MiB, format="qcow2")
    c.call("volume_create", pool=pool, name="data", size=MiB, format="raw")
    root = {"pool": pool, "name": "root", "format": "qcow2", "serial": "ROOT", "device_id": 0}
    data = {"pool": pool, "name": "data", "format": "raw", "serial": "DATA", "device_id": 1,
            "qos": {"iops_wr": 10}}
    with pytest.raises(errors.NotFound, match="volume missing does not exist"):
        c.call("vm_start", name="s1", memory_mb=64, cpus=1, disks=[{**root, "name": "missing"}])
    vm = c.call("vm_start", name="s1", uuid="u-1", memory_mb=64, cpus=1, disks=[root])
    root_image = {"serial": "ROOT", "pool_uuid": pool["uuid"], "name": "root", "device_id": 0}
    assert vm == {"name": "s1", "uuid": "u-1", "state": "Running", "disks": ["ROOT"], "images": [root_image],
                  "cdrom": None}
    c.call("disk_attach", vm="s1", disk=data)
    with pytest.raises(errors.ResourceInUse):
        c.call("volume_delete", pool=pool, name="data")
    wait_until("statistics to grow", lambda: c.call("disk_stats", vm="s1")["disks"]["DATA"]["wr_ops"] > 0)
    assert c.call("disk_set_qos", vm="s1", serial="DATA", qos={"bps_rd": MiB}) == {"qos": {"bps_rd": MiB}}
    assert c.call("disk_resize", vm="s1", serial="DATA", size=2 * MiB) == {"size": 2 * MiB}
    task = c.call_async("volume_mirror", vm="s1", serial="DATA", dst_pool=pool2, dst_name="data2", format="qcow2")
    assert c.wait_task(task) == {"path": "data2", "serial": "DATA"}
    assert os.listdir(pool2["path"]) == ["data2"]
    sim_agent.restart()
    c = sim_agent.client
    data_image = {"serial": "DATA", "pool_uuid": pool2["uuid"], "name": "data2", "device_id": 1}
    assert c.call("vm_list") == {"vms": [{**vm, "disks": ["ROOT", "DATA"], "images": [root_image, data_image]}]}
    assert c.call("disk_detach", vm="s1", serial="DATA") == {} and c.call("disk_detach", vm="s1", serial="DATA") == {}
    assert c.call("vm_stop", name="s1") == {"forced": False}
    assert c.call("vm_list")["vms"][0]["state"] == "Stopped"
    with pytest.raises(errors.ResourceUnavailable, match="not running"):
        c.call("vm_reboot", name="s1")
    assert c.call("vm_destroy", name="s1") == {} and c.call("vm_list") == {"vms": []}
