"""Volumes on local directory pools with the real qemu-img: create, info, resize, list, copy, delete."""
import hashlib
import json
import os
import signal
import struct
import subprocess

import pytest

from volstack import errors

from agentproc import wait_until

MiB = 1 << 20


def qemu_info(path):
    return json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                                     capture_output=True, text=True).stdout)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def test_pool_connect_and_stats(sim_agent, pool):
    st = sim_agent.client.call("pool_connect", pool=pool)
    assert st["capacity"] > st["available"] > 0 and st["used"] > 0
    assert set(sim_agent.client.call("pool_stats", pool=pool)) == {"capacity", "used", "available"}
    assert sim_agent.client.call("pool_disconnect", pool=pool) == {}
    assert not os.path.exists("/nonexistent-pool-dir")
    with pytest.raises(errors.ResourceUnavailable, match="does not exist on host host1"):
        sim_agent.client.call("pool_connect", pool={**pool, "path": "/nonexistent-pool-dir"})
    assert not os.path.exists("/nonexistent-pool-dir")   # never created


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_volume_create_provisioning(sim_agent, pool, fmt):
    c = sim_agent.client
    sizes = {}
    for prov in ("thin", "sparse", "fat"):
        r = c.call("volume_create", pool=pool, name=f"{fmt}-{prov}", size=32 * MiB, format=fmt, provisioning=prov)
        assert r["path"] == f"{fmt}-{prov}" and r["size"] == 32 * MiB
        info = qemu_info(os.path.join(pool["path"], r["path"]))
        assert info["format"] == fmt and info["virtual-size"] == 32 * MiB
        sizes[prov] = r["physical_size"]
    assert sizes["thin"] < 4 * MiB and sizes["fat"] >= 32 * MiB
    assert c.call("volume_info", pool=pool, name=f"{fmt}-fat", format=fmt) == {
        "size": 32 * MiB, "physical_size": sizes["fat"], "format": fmt, "backing": None, "backing_format": None,
        "encrypted": False}


def test_volume_create_is_idempotent_and_never_overwrites(sim_agent, pool):
    c = sim_agent.client
    first = c.call("volume_create", pool=pool, name="v1", size=MiB, format="qcow2")
    assert c.call("volume_create", pool=pool, name="v1", size=MiB, format="qcow2") == first
    with pytest.raises(errors.InvalidParameter, match="already exists"):
        c.call("volume_create", pool=pool, name="v1", size=2 * MiB, format="qcow2")
    with pytest.raises(errors.InvalidParameter, match="already exists"):
        c.call("volume_create", pool=pool, name="v1", size=MiB, format="raw")
    for bad in ("../x", "a/b", ".hidden", "", "-o"):
        with pytest.raises(errors.InvalidParameter, match="invalid image name"):
            c.call("volume_create", pool=pool, name=bad, size=MiB, format="qcow2")
    for size in (0, -5, 1 << 60, "1G", True):
        with pytest.raises(errors.InvalidParameter, match="size"):
            c.call("volume_create", pool=pool, name="v2", size=size, format="qcow2")
    with pytest.raises(errors.InvalidParameter, match="provisioning"):
        c.call("volume_create", pool=pool, name="v2", size=MiB, format="qcow2", provisioning="thick")


def test_volume_resize_and_delete(sim_agent, pool):
    c = sim_agent.client
    c.call("volume_create", pool=pool, name="v1", size=64 * MiB, format="qcow2")
    assert c.call("volume_resize", pool=pool, name="v1", size=128 * MiB, format="qcow2") == {"size": 128 * MiB}
    with pytest.raises(errors.InvalidParameter, match="shrink_ok"):
        c.call("volume_resize", pool=pool, name="v1", size=32 * MiB, format="qcow2")
    assert c.call("volume_info", pool=pool, name="v1", format="qcow2")["size"] == 128 * MiB
    assert c.call("volume_resize", pool=pool, name="v1", size=32 * MiB, format="qcow2",
                  shrink_ok=True) == {"size": 32 * MiB}
    assert c.call("volume_delete", pool=pool, name="v1") == {}
    assert not os.path.exists(os.path.join(pool["path"], "v1"))
    assert c.call("volume_delete", pool=pool, name="v1") == {}       # already gone: fine
    with pytest.raises(errors.NotFound):
        c.call("volume_resize", pool=pool, name="v1", size=MiB, format="qcow2")


def test_pool_list_and_paths_outside_the_pool(sim_agent, pool, tmp_path):
    c = sim_agent.client
    c.call("volume_create", pool=pool, name="q", size=MiB, format="qcow2")
    c.call("volume_create", pool=pool, name="r", size=MiB, format="raw")
    root = pool["path"]
    os.mkdir(os.path.join(root, "sub"))
    open(os.path.join(root, "sub", "notes.txt"), "w").write("hello")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", os.path.join(root, "escape"))
    entries = {e["name"]: e for e in c.call("pool_list", pool=pool)["entries"]}
    assert set(entries) == {"q", "r", "sub", "escape"}
    assert entries["q"]["format"] == "qcow2" and entries["r"]["format"] == "raw" and entries["r"]["size"] == MiB
    assert entries["sub"]["isdirectory"] is True and entries["sub"]["format"] is None
    assert entries["escape"]["format"] is None and entries["escape"]["isdirectory"] is False
    assert all(isinstance(e["lastupdated"], int) and e["lastupdated"] > 1e9 for e in entries.values())
    assert [e["name"] for e in c.call("pool_list", pool=pool, path="sub")["entries"]] == ["notes.txt"]
    for path in ("..", "../pool2", "/etc", "sub/../..", "escape", "escape/x"):
        with pytest.raises(errors.InvalidParameter, match="pool"):
            c.call("pool_list", pool=pool, path=path)


def test_volume_copy_with_progress(sim_agent, pool, pool2):
    c = sim_agent.client
    src = os.path.join(pool["path"], "src")
    with open(src, "wb") as f:
        for i in range(96):
            f.write(bytes([i % 251 + 1]) * MiB)
    before = sha256(src)
    seen = []
    task = c.call_async("volume_copy", src_pool=pool, src_name="src", dst_pool=pool2, dst_name="dst", format="qcow2",
                        src_format="raw")
    result = c.wait_task(task, progress_cb=seen.append)
    assert result == {"path": "dst", "size": 96 * MiB, "physical_size": result["physical_size"], "format": "qcow2"}
    assert seen == sorted(seen) and seen[-1] == 100
    assert c.task(task)["state"] == "done" and c.task(task)["progress"] == 100
    dst = os.path.join(pool2["path"], "dst")
    assert qemu_info(dst)["format"] == "qcow2"
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", src, dst], check=True, capture_output=True)
    assert sha256(src) == before
    assert sorted(os.listdir(pool2["path"])) == ["dst"]
    with pytest.raises(errors.InvalidParameter, match="already exists"):
        c.call("volume_copy", src_pool=pool, src_name="src", dst_pool=pool2, dst_name="dst", format="raw",
               src_format="raw")
    sync = c.call("volume_copy", src_pool=pool2, src_name="dst", dst_pool=pool, dst_name="back", format="raw",
                  src_format="qcow2")
    assert sync["format"] == "raw" and sha256(os.path.join(pool["path"], "back")) == before


def _corrupt_first_cluster(path):
    """Point the qcow2 L2 entry of cluster 0 at an unaligned offset: reading it is an I/O error."""
    with open(path, "r+b") as f:
        header = f.read(72)
        l1_offset, = struct.unpack(">Q", header[40:48])
        f.seek(l1_offset)
        l2_offset = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
        f.seek(l2_offset)
        entry = struct.unpack(">Q", f.read(8))[0]
        f.seek(l2_offset)
        f.write(struct.pack(">Q", (entry | 0x8000000000000000) + 0x200))


def test_failed_copy_leaves_no_destination_and_the_source_untouched(sim_agent, pool, pool2):
    c = sim_agent.client
    src = os.path.join(pool["path"], "broken")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", src, "8M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 1M", src], check=True, capture_output=True)
    _corrupt_first_cluster(src)
    before = sha256(src)
    task = c.call_async("volume_copy", src_pool=pool, src_name="broken", dst_pool=pool2, dst_name="dst",
                        format="raw", src_format="qcow2")
    with pytest.raises(errors.InternalError, match="copy broken"):
        c.wait_task(task)
    assert os.listdir(pool2["path"]) == []
    assert sha256(src) == before


@pytest.mark.slow
def test_agent_killed_mid_copy(make_agent, pool, pool2):
    a = make_agent("simulator")
    src = os.path.join(pool["path"], "big")
    with open(src, "wb") as f:
        block = bytes(range(1, 256)) * (MiB // 255 + 1)
        for _ in range(768):
            f.write(block[:MiB])
    size_before, mtime_before = os.path.getsize(src), os.path.getmtime(src)
    task = a.client.call_async("volume_copy", src_pool=pool, src_name="big", dst_pool=pool2, dst_name="dst",
                               format="qcow2", src_format="raw")
    state = wait_until("the copy to make progress", lambda: (lambda s: s if s["progress"] > 0 or
                                                             s["state"] != "running" else None)(a.client.task(task)))
    a.restart(signal.SIGKILL)
    after = a.client.task(task)
    print("copy state when the agent was killed:", state, "after the restart:", after)
    if state["state"] == "running" and after["state"] == "failed":
        assert after["error"] == "agent restarted"
        assert os.listdir(pool2["path"]) == []              # the partial copy is gone
    else:                                                   # it finished before the kill: then it says so
        assert after["state"] == "done" and os.listdir(pool2["path"]) == ["dst"]
    assert (os.path.getsize(src), os.path.getmtime(src)) == (size_before, mtime_before)
    wait_until("no qemu-img left writing", lambda: not _copying(pool2["path"]))


def _copying(pool_dir):
    """PIDs of qemu-img processes writing into pool_dir."""
    return [int(p) for p, cmd in _proc_cmdlines() if b"qemu-img" in cmd and str(pool_dir).encode() in cmd]


def _proc_cmdlines():
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    yield p, f.read()
            except OSError:
                pass


def test_cancel_a_running_copy_and_not_a_finished_one(sim_agent, pool, pool2):
    """task_cancel by what the task works on kills the copy's qemu-img, removes the partial destination and
    fails the task; a finished copy is left alone and the answer says it is done (its result can be adopted)."""
    c = sim_agent.client
    with open(os.path.join(pool["path"], "src"), "wb") as f:
        for i in range(16):
            f.write(bytes([i + 1]) * MiB)
    # 1 MiB/s: 16 s unless cancelled
    task = c.call_async("volume_copy", src_pool=pool, src_name="src", dst_pool=pool2, dst_name="dst", format="qcow2",
                        src_format="raw", speed=MiB)
    wait_until("the copy to make progress", lambda: c.task(task)["progress"] > 0)
    [pid] = _copying(pool2["path"])
    assert os.listdir(pool2["path"]) == [".dst.part"]
    out = c.call("task_cancel", command="volume_copy", match={"dst_pool": pool2["uuid"], "dst_name": "dst"},
                 reason="the migration job died")
    assert out["task"] == task and out["state"] == "failed"
    assert out["error"] == "cancelled: the migration job died"
    assert not os.path.exists(f"/proc/{pid}") and _copying(pool2["path"]) == []
    assert os.listdir(pool2["path"]) == []
    assert c.task(task)["state"] == "failed" and c.task(task)["error"].startswith("cancelled:")
    with pytest.raises(errors.InternalError, match="cancelled"):
        c.wait_task(task)

    done = c.call_async("volume_copy", src_pool=pool, src_name="src", dst_pool=pool2, dst_name="dst", format="raw",
                        src_format="raw")
    result = c.wait_task(done)
    out = c.call("task_cancel", command="volume_copy", match={"dst_pool": pool2["uuid"], "dst_name": "dst"})
    assert (out["task"], out["state"], out["result"]) == (done, "done", result)
    assert os.listdir(pool2["path"]) == ["dst"] and sha256(os.path.join(pool2["path"], "dst")) == \
        sha256(os.path.join(pool["path"], "src"))
    assert c.call("task_cancel", task=done)["state"] == "done"
    assert c.call("task_cancel", command="volume_copy", match={"dst_pool": pool2["uuid"], "dst_name": "other"}) == \
        {"task": None, "state": "unknown"}
    assert c.call("task_cancel", task="no-such-task") == {"task": "no-such-task", "state": "unknown"}
    # the caller may name a task (to cancel it by id without having heard back), once
    named = c.call_async("volume_copy", src_pool=pool, src_name="src", dst_pool=pool2, dst_name="again",
                         format="raw", src_format="raw", _task="copy-1")
    assert named == "copy-1" and c.wait_task(named)["path"] == "again"
    with pytest.raises(errors.InvalidParameter, match="task copy-1 already exists"):
        c.call_async("volume_copy", src_pool=pool, src_name="src", dst_pool=pool2, dst_name="more", format="raw",
                     src_format="raw", _task="copy-1")
