"""Seen point 7 of issue 12: `volstack up` killed with SIGKILL leaves no agent behind, and a later `up` on the
same data directory replaces an agent that is still running there instead of failing; `volstack agent
--log-level` takes effect."""
import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.agentproc import AgentProcess, wait_until
from tests.test_cli import VOLSTACK, _read_until, _stop
from volstack.agent.client import AgentClient
from volstack.agent.main import lock_holder


def _up(data):
    proc = subprocess.Popen([VOLSTACK, "up", "--data-dir", str(data), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _read_until(proc, lambda ls: any(l.startswith("export CLOUDSTACK_SECRET=") for l in ls))
    return proc


def _hosts(data):
    cs = str(Path(sys.executable).with_name("cs"))
    out = subprocess.run([cs, "listHosts"], cwd=data, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["host"]


def test_up_killed_leaves_no_agent_and_the_next_up_replaces_a_running_one(tmp_path):
    data = tmp_path / "data"
    proc = _up(data)
    agent_pid = lock_holder(data / "agent")
    assert agent_pid is not None
    proc.kill()                                    # kill -9: no clean-up code of `up` runs
    proc.wait(timeout=10)
    wait_until("the agent of the killed `up` to end", lambda: lock_holder(data / "agent") is None, timeout=30)

    # an agent still running on the data directory (started by hand here; an orphan of an older `up` alike)
    orphan = AgentProcess(data / "agent", "qemu", "localhost").start()
    assert lock_holder(data / "agent") == orphan.proc.pid
    proc = _up(data)
    try:
        assert orphan.proc.wait(timeout=30) is not None         # it was replaced, not left beside the new one
        holder = lock_holder(data / "agent")
        assert holder not in (None, orphan.proc.pid)
        assert [h["state"] for h in _hosts(data) if h["name"] == "localhost"] == ["Up"]
    finally:
        _stop(proc)
    wait_until("the agent to end with `up`", lambda: lock_holder(data / "agent") is None, timeout=30)


def test_agent_log_level_takes_effect(tmp_path):
    state = tmp_path / "state"
    proc = subprocess.Popen([VOLSTACK, "agent", "--state-dir", str(state), "--hypervisor", "simulator",
                             "--log-level", "INFO"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = proc.stdout.readline().decode().split("listening on ")[1].strip()
        AgentClient(url, (state / "token").read_text().strip()).call("vm_list")
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=20)[1].decode()
    assert "INFO volstack.agent: vm_list ok" in err, err


def test_a_burst_of_signals_still_stops_the_agent(tmp_path):
    """A SIGTERM handler that set a threading.Event deadlocked when a second signal came while the first one's
    handler held the Event's lock: the agent of a killed `up` stayed forever, holding its state directory."""
    import os
    proc = subprocess.Popen([VOLSTACK, "agent", "--state-dir", str(tmp_path / "state"), "--hypervisor", "simulator"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert "listening on" in proc.stdout.readline().decode()
        for _ in range(1000):
            os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
