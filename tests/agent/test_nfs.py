"""NetworkFilesystem pools on a real nfs-ganesha (tests/nfsserver.py), reached only through userspace clients:
QEMU's nfs:// driver and the agent's NFSv3 client. Nothing is mounted."""
import hashlib
import json
import os
import subprocess
import time

import pytest

from volstack import errors
from volstack.agent.qmp import Qmp

MiB = 1 << 20


def test_nfs_pool_volumes(sim_agent, nfs_pool):
    pool, export_dir = nfs_pool
    c = sim_agent.client
    st = c.call("pool_connect", pool=pool)
    assert st["capacity"] > 0 and 0 < st["available"] <= st["capacity"]
    thin = c.call("volume_create", pool=pool, name="thin", size=64 * MiB, format="qcow2", provisioning="thin")
    fat = c.call("volume_create", pool=pool, name="fat", size=16 * MiB, format="raw", provisioning="fat")
    sparse = c.call("volume_create", pool=pool, name="sparse", size=16 * MiB, format="qcow2", provisioning="sparse")
    assert thin["physical_size"] < 2 * MiB and fat["physical_size"] >= 16 * MiB and sparse["size"] == 16 * MiB
    assert sorted(os.listdir(export_dir)) == ["fat", "sparse", "thin"]       # really on the export
    assert c.call("volume_create", pool=pool, name="thin", size=64 * MiB, format="qcow2") == thin
    info = c.call("volume_info", pool=pool, name="thin", format="qcow2")
    assert (info["size"], info["format"], info["backing"]) == (64 * MiB, "qcow2", None)
    assert c.call("volume_resize", pool=pool, name="thin", size=96 * MiB, format="qcow2") == {"size": 96 * MiB}
    os.mkdir(export_dir / "dir")
    entries = {e["name"]: e for e in c.call("pool_list", pool=pool)["entries"]}
    assert set(entries) == {"thin", "fat", "sparse", "dir"}
    assert entries["fat"] == {"name": "fat", "isdirectory": False, "size": 16 * MiB,
                              "lastupdated": entries["fat"]["lastupdated"], "format": "raw"}
    assert entries["dir"]["isdirectory"] and entries["thin"]["format"] == "qcow2"
    assert c.call("pool_list", pool=pool, path="dir") == {"entries": []}
    os.symlink("/etc", export_dir / "etc-link")
    for path in ("..", "/etc", "dir/../..", "etc-link"):
        with pytest.raises(errors.InvalidParameter):
            c.call("pool_list", pool=pool, path=path)
    assert c.call("volume_delete", pool=pool, name="fat") == {}
    assert c.call("volume_delete", pool=pool, name="fat") == {}
    assert not (export_dir / "fat").exists()
    with pytest.raises(errors.NotFound):
        c.call("volume_info", pool=pool, name="fat", format="raw")


def test_unreachable_nfs_is_refused_quickly(sim_agent, nfs_pool):
    pool, _ = nfs_pool
    for bad, text in (({**pool, "export": "/not-exported"}, "refused to mount /not-exported"),
                      ({**pool, "host": "127.0.0.3"}, "not reachable")):
        t = time.monotonic()
        with pytest.raises(errors.ResourceUnavailable, match=text):
            sim_agent.client.call("pool_connect", pool=bad)
        assert time.monotonic() - t < 10
    with pytest.raises(errors.InvalidParameter, match="export"):
        sim_agent.client.call("pool_connect", pool={**pool, "export": "relative/path"})


def test_copy_local_to_nfs_and_back(sim_agent, pool, nfs_pool):
    npool, export_dir = nfs_pool
    c = sim_agent.client
    src = os.path.join(pool["path"], "src")
    with open(src, "wb") as f:
        for i in range(48):
            f.write(bytes([i + 1]) * MiB)
    digest = hashlib.sha256(open(src, "rb").read()).hexdigest()
    seen = []
    task = c.call_async("volume_copy", src_pool=pool, src_name="src", dst_pool=npool, dst_name="onnfs", format="qcow2",
                        src_format="raw")
    assert c.wait_task(task, progress_cb=seen.append)["format"] == "qcow2"
    assert seen[-1] == 100 and sorted(os.listdir(export_dir)) == ["onnfs"]
    c.call("volume_copy", src_pool=npool, src_name="onnfs", dst_pool=pool, dst_name="back", format="raw",
           src_format="qcow2")
    assert hashlib.sha256(open(os.path.join(pool["path"], "back"), "rb").read()).hexdigest() == digest
    with pytest.raises(errors.NotFound):
        c.call("volume_copy", src_pool=npool, src_name="missing", dst_pool=pool, dst_name="x", format="raw",
               src_format="raw")
    assert sorted(os.listdir(export_dir)) == ["onnfs"] and "x" not in os.listdir(pool["path"])


def test_guest_disks_on_nfs_and_live_mirror_off_it(agent, pool, nfs_pool):
    npool, export_dir = nfs_pool
    c = agent.client
    c.call("volume_create", pool=npool, name="root", size=32 * MiB, format="qcow2")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4M", str(export_dir / "root")], check=True,
                   capture_output=True)
    vm = c.call("vm_start", name="nfsvm", memory_mb=64, cpus=1,
                disks=[{"pool": npool, "name": "root", "format": "qcow2", "serial": "ROOT", "device_id": 0}])
    c.call("volume_create", pool=npool, name="data", size=16 * MiB, format="raw")
    c.call("disk_attach", vm="nfsvm", disk={"pool": npool, "name": "data", "format": "raw", "serial": "DATA",
                                             "device_id": 1, "qos": {"iops_wr": 50}})
    with Qmp(vm["monitor"]) as q:
        files = sorted(b["inserted"]["file"] for b in q.execute("query-block") if b["qdev"] != "cd0")
    assert files == [f"nfs://127.0.0.1{npool['export']}/data", f"nfs://127.0.0.1{npool['export']}/root"]
    task = c.call_async("volume_mirror", vm="nfsvm", serial="ROOT", dst_pool=pool, dst_name="root-local",
                        format="qcow2")
    assert c.wait_task(task) == {"path": "root-local", "serial": "ROOT"}
    with Qmp(vm["monitor"]) as q:
        files = sorted(b["inserted"]["file"] for b in q.execute("query-block") if b["qdev"] != "cd0")
    assert files == sorted([f"nfs://127.0.0.1{npool['export']}/data", os.path.join(pool["path"], "root-local")])
    c.call("vm_stop", name="nfsvm", forced=True)
    same = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(export_dir / "root"),
                           os.path.join(pool["path"], "root-local")], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", os.path.join(pool["path"], "root-local")],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["virtual-size"] == 32 * MiB
    c.call("vm_destroy", name="nfsvm")
