"""Fixtures for the host agent: agents as real subprocesses (`python -m volstack.agent`), local pools.

    def test_x(agent):            # a qemu agent on a fresh state dir; agent.client is an AgentClient
        agent.client.call("vm_list")
        agent.restart()           # SIGKILL (default) or SIGTERM, then start again on the same state dir

Every guest an agent started is destroyed by PID at teardown (the pid files in its state dir).
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from volstack.agent.client import AgentClient

from agentproc import ROOT, AgentProcess, wait_until  # noqa: F401,E402


@pytest.fixture
def make_agent(tmp_path):
    agents = []

    def make(hypervisor="qemu", name="host1", state=None, **kw):
        a = AgentProcess(state or tmp_path / f"state-{name}", hypervisor, name, **kw).start()
        agents.append(a)
        return a
    yield make
    for a in agents:
        try:                              # destroy through the agent (also removes socket dirs) ...
            if a.proc is not None and a.proc.poll() is None:
                for vm in a.client.call("vm_list")["vms"]:
                    a.client.call("vm_destroy", name=vm["name"])
        except Exception:
            pass
        a.stop()
        a.kill_guests()                   # ... and by PID whatever is left


@pytest.fixture
def agent(make_agent):
    return make_agent("qemu")


@pytest.fixture
def sim_agent(make_agent):
    return make_agent("simulator")


@pytest.fixture
def pool(tmp_path):
    d = tmp_path / "pool1"
    d.mkdir()
    return {"uuid": "pool-1", "type": "Filesystem", "path": str(d)}


@pytest.fixture
def pool2(tmp_path):
    d = tmp_path / "pool2"
    d.mkdir()
    return {"uuid": "pool-2", "type": "SharedMountPoint", "path": str(d)}


@pytest.fixture(scope="session")
def nfs_server():
    from nfsserver import shared_server
    return shared_server()


@pytest.fixture
def nfs_pool(nfs_server, tmp_path, request):
    pseudo = f"/agent-{os.getpid()}-{re.sub(r'[^A-Za-z0-9]', '', request.node.name)[-40:]}"
    export_dir = tmp_path / "nfs-export"
    nfs_server.add_export(pseudo, export_dir)
    yield {"uuid": "nfs-1", "type": "NetworkFilesystem", "host": "127.0.0.1", "export": pseudo}, export_dir
    nfs_server.remove_export(pseudo)
