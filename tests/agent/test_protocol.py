"""The agent protocol: hello, token auth, request-id idempotency, tasks, error kinds, the client's mapping."""
import json
import os
import sqlite3
import stat
import urllib.error
import urllib.request
import uuid

import pytest

from volstack import __version__, errors
from volstack.agent.client import AgentClient


def raw(agent, method, path, body=None, token="ours"):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {agent.token if token == 'ours' else token}"
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(agent.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_hello_reports_host_and_capabilities(agent):
    hello = agent.client.hello()
    assert hello["protocol"] == 1 and hello["hostname"] == "host1" and hello["hypervisor"] == "qemu"
    assert hello["version"] == __version__
    caps = hello["capabilities"]
    assert caps["tcg"] is True and caps["nfs_driver"] is True and caps["max_data_disks"] > 0
    assert caps["qemu_version"].startswith(("7.", "8.", "9."))
    assert isinstance(caps["kvm"], bool)


def test_token_is_generated_private_and_required(sim_agent):
    token_file = sim_agent.state_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(sim_agent.token) >= 32
    for token in (None, "wrong", sim_agent.token + "x"):
        status, body = raw(sim_agent, "GET", "/v1/hello", token=token)
        assert status == 401 and body["ok"] is False and "token" in body["error"]
        status, body = raw(sim_agent, "POST", "/v1/command", {"id": "1", "cmd": "vm_list", "args": {}}, token=token)
        assert status == 401
    with pytest.raises(errors.ResourceUnavailable, match="credential"):
        AgentClient(sim_agent.url, "wrong").hello()
    # the token never appears in what the agent prints or logs
    assert sim_agent.token.encode() not in open(sim_agent.log.name, "rb").read()


def test_token_from_environment(make_agent):
    a = make_agent("simulator", token="s3cret-token-from-env")
    assert not (a.state_dir / "token").exists()
    assert a.client.hello()["hypervisor"] == "simulator"


def test_repeated_request_id_returns_the_stored_outcome_without_redoing(sim_agent, pool):
    body = {"id": str(uuid.uuid4()), "cmd": "volume_create",
            "args": {"pool": pool, "name": "v1", "size": 1 << 20, "format": "qcow2"}}
    status, first = raw(sim_agent, "POST", "/v1/command", body)
    assert status == 200 and first["ok"] and first["result"]["size"] == 1 << 20
    image = os.path.join(pool["path"], "v1")
    os.unlink(image)
    status, again = raw(sim_agent, "POST", "/v1/command", body)
    assert (status, again) == (200, first)
    assert not os.path.exists(image)          # replayed, not redone
    # failures are replayed too, and the record survives a restart
    bad = {"id": str(uuid.uuid4()), "cmd": "volume_info", "args": {"pool": pool, "name": "v1", "format": "qcow2"}}
    assert raw(sim_agent, "POST", "/v1/command", bad)[0] == 404
    sim_agent.restart()
    assert raw(sim_agent, "POST", "/v1/command", body) == (200, first)
    assert raw(sim_agent, "POST", "/v1/command", bad)[0] == 404


def test_bad_requests_are_refused_with_a_kind(sim_agent):
    status, body = raw(sim_agent, "POST", "/v1/command", {"id": "a", "cmd": "format_the_disk", "args": {}})
    assert status == 400 and body["kind"] == "InvalidArgument" and "unknown command" in body["error"]
    status, body = raw(sim_agent, "POST", "/v1/command", b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, body = raw(sim_agent, "POST", "/v1/command", {"cmd": "vm_list"})
    assert status == 400 and "id" in body["error"]
    status, body = raw(sim_agent, "GET", "/v1/tasks/nope")
    assert status == 404 and body["kind"] == "NotFound"
    status, body = raw(sim_agent, "GET", "/v2/hello")
    assert status == 404


def test_client_maps_kinds_to_cloudstack_errors(sim_agent, pool):
    c = sim_agent.client
    with pytest.raises(errors.NotFound, match="does not exist"):
        c.call("volume_info", pool=pool, name="missing", format="qcow2")
    with pytest.raises(errors.InvalidParameter, match="size"):
        c.call("volume_create", pool=pool, name="v", size=-1, format="qcow2")
    with pytest.raises(errors.InvalidParameter) as e:
        c.call("volume_create", pool=pool, name="v", size=1 << 20, format="vmdk")
    assert e.value.errorcode == 431
    missing = {"uuid": "p9", "type": "SharedMountPoint", "path": "/nonexistent/mount/point"}
    with pytest.raises(errors.ResourceUnavailable, match="path /nonexistent/mount/point does not exist on host host1"):
        c.call("pool_connect", pool=missing)


def test_connection_failure_names_the_agent(sim_agent):
    url = sim_agent.url
    sim_agent.stop()
    with pytest.raises(errors.ResourceUnavailable, match=f"cannot reach the agent at {url}"):
        AgentClient(url, "t", timeout=2).call("vm_list")


def test_client_retries_once_with_the_same_request_id(monkeypatch):
    c = AgentClient("http://127.0.0.1:9", "t")
    seen = []

    def flaky(method, path, body=None, timeout=None):
        seen.append(body["id"])
        if len(seen) == 1:
            raise urllib.error.URLError(ConnectionResetError("reset"))
        return {"ok": True, "result": {"done": True}}
    monkeypatch.setattr(c, "_request", flaky)
    assert c.call("vm_list") == {"done": True}
    assert len(seen) == 2 and seen[0] == seen[1]


def test_wait_task_fails_when_progress_stalls(monkeypatch):
    c = AgentClient("http://127.0.0.1:9", "t", poll_interval=0.01)
    monkeypatch.setattr(c, "task", lambda task_id: {"state": "running", "progress": 5})
    with pytest.raises(errors.ResourceUnavailable, match="no progress"):
        c.wait_task("t1", stall_timeout=0.2)
    states = iter([{"state": "running", "progress": p} for p in (1, 2, 3)] + [{"state": "failed", "progress": 3,
                                                                              "error": "boom", "kind": "Busy"}])
    monkeypatch.setattr(c, "task", lambda task_id: next(states))
    seen = []
    with pytest.raises(errors.ResourceInUse, match="boom"):
        c.wait_task("t1", progress_cb=seen.append, stall_timeout=5)
    assert seen == [1, 2, 3]


def test_interrupted_task_is_failed_or_recognised_as_done_after_restart(sim_agent, pool):
    c = sim_agent.client
    c.call("volume_create", pool=pool, name="src", size=1 << 20, format="raw")
    c.call("volume_create", pool=pool, name="finished", size=1 << 20, format="qcow2")
    sim_agent.stop()
    db = sqlite3.connect(sim_agent.state_dir / "agent.db")
    copy = {"src_pool": pool, "src_name": "src", "dst_pool": pool, "format": "qcow2"}
    with db:
        db.execute("INSERT INTO tasks (id, cmd, args, state, progress) VALUES ('t-done', 'volume_copy', ?, "
                   "'running', 40)", (json.dumps({**copy, "dst_name": "finished"}),))
        db.execute("INSERT INTO tasks (id, cmd, args, state, progress) VALUES ('t-cut', 'volume_copy', ?, "
                   "'running', 40)", (json.dumps({**copy, "dst_name": "cut"}),))
    db.close()
    part = os.path.join(pool["path"], ".cut.part")
    open(part, "wb").write(b"partial")
    sim_agent.start()
    done = sim_agent.client.task("t-done")
    assert done["state"] == "done" and done["result"]["path"] == "finished"
    cut = sim_agent.client.task("t-cut")
    assert cut == {"state": "failed", "progress": 40, "error": "agent restarted", "kind": "Failed"}
    assert not os.path.exists(part)


def test_one_agent_per_state_dir_and_the_command_line(sim_agent, tmp_path):
    from agentproc import AgentProcess
    with pytest.raises(RuntimeError, match="did not start"):
        AgentProcess(sim_agent.state_dir, "simulator").start()
    assert sim_agent.client.hello()["hostname"] == "host1"

    import argparse
    from volstack.agent.main import add_parser, run
    parser = argparse.ArgumentParser(prog="volstack")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["agent", "--state-dir", str(tmp_path / "s"), "--listen", "127.0.0.1:0",
                              "--hypervisor", "simulator", "--name", "h9"])
    assert (args.func, args.state_dir, args.listen, args.hypervisor, args.name, args.token) == \
        (run, str(tmp_path / "s"), "127.0.0.1:0", "simulator", "h9", None)
    with pytest.raises(SystemExit):
        parser.parse_args(["agent", "--state-dir", "x", "--hypervisor", "xen"])
