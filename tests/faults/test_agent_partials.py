"""Seen point 4 of issue 12: what a task leaves under a temporary name when the agent dies is removed by the
agent's start-up, for every kind of task that writes one (not only volume copies)."""
import json
import signal
import sqlite3
import subprocess
import time

from tests.agentproc import AgentProcess


def _interrupted_task(state, task_id, cmd, args):
    db = sqlite3.connect(state / "agent.db")
    db.execute("INSERT INTO tasks (id, cmd, args, state, progress, updated) VALUES (?, ?, ?, 'running', 40, ?)",
               (task_id, cmd, json.dumps(args), time.time()))
    db.commit()
    db.close()


def test_restart_removes_the_partial_files_of_every_interrupted_task(tmp_path):
    pool = tmp_path / "pool"
    store = tmp_path / "store"
    pool.mkdir(), store.mkdir()
    spec, store_spec = {"uuid": "p1", "type": "Filesystem", "path": str(pool)}, \
        {"uuid": "s1", "type": "Filesystem", "path": str(store)}
    state = tmp_path / "state"
    agent = AgentProcess(state, "simulator").start()
    agent.stop(signal.SIGKILL)
    for name in ("vol1", "snap-done.qcow2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(pool / name), "1M"], check=True)
    leftovers = [pool / ".vol1.revert.part", pool / "vol1.revert", store / ".b1.qcow2.part",
                 pool / ".s2.qcow2.qcow2.part", store / ".r1.part", state / "rbd-work" / "out-0f0f"]
    (state / "rbd-work").mkdir()
    for f in leftovers:
        f.write_bytes(b"partial")
    _interrupted_task(state, "t-revert", "snapshot_revert", {"pool": spec, "name": "vol1", "src_pool": store_spec,
                                                              "src_name": "b0.qcow2", "format": "qcow2"})
    _interrupted_task(state, "t-backup", "snapshot_backup", {"pool": spec, "name": "vol1", "kind": "file",
                                                              "primary": "snap-done.qcow2", "format": "qcow2",
                                                              "dst_pool": store_spec, "dst_name": "b1.qcow2"})
    _interrupted_task(state, "t-take", "snapshot_take", {"pool": spec, "name": "vol1", "format": "qcow2",
                                                          "snapshot": "s2.qcow2"})
    _interrupted_task(state, "t-rbd", "rbd_export_diff", {"pool": spec, "name": "vol1", "snapshot": "x",
                                                           "dst_pool": store_spec, "dst_name": "r1"})
    agent.start()
    try:
        assert [str(f) for f in leftovers if f.exists()] == []
        assert (pool / "vol1").exists() and (pool / "snap-done.qcow2").exists()   # finished names are kept
        for t in ("t-revert", "t-backup", "t-take", "t-rbd"):
            assert agent.client.task(t)["state"] == "failed"
            assert agent.client.task(t)["error"] == "agent restarted"
    finally:
        agent.stop()
