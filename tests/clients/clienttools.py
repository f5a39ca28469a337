"""Shared helpers for the real-client acceptance tests: where the client virtualenvs live, a clean
environment for their processes, and running them."""
import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_VENV = ROOT / ".venv-clients"
CS_BIN = CLIENTS_VENV / "bin" / "cs"
CLIENTS_PYTHON = CLIENTS_VENV / "bin" / "python"
ANSIBLE_PLAYBOOK = CLIENTS_VENV / "bin" / "ansible-playbook"
CLOUDMONKEY_BIN = ROOT / ".venv-cloudmonkey" / "bin" / "cloudmonkey"

_DROP_PREFIXES = ("CLOUDSTACK_", "ANSIBLE_", "PYTHON", "VIRTUAL_ENV")


def client_env(home: Path, **extra) -> dict:
    """The environment of a client process: no CLOUDSTACK_*/ANSIBLE_*/PYTHON* from the caller, and
    HOME pointing at a temporary directory so no client reads or writes the real user's files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cs_env(ms, home: Path, **extra) -> dict:
    """Environment variables that point the `cs` CLI (and the Ansible modules) at a test server."""
    return client_env(home, CLOUDSTACK_ENDPOINT=ms.endpoint, CLOUDSTACK_KEY=ms.admin.api_key,
                      CLOUDSTACK_SECRET=ms.admin_secret, **extra)


def run(cmd, env: dict, cwd=None, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a client; stdout/stderr decoded as UTF-8 with '\r' kept (text=True would turn it into '\n')."""
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, timeout=timeout,
                          input=input.encode() if input is not None else None)
    proc.stdout = proc.stdout.decode("utf-8", "replace")
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    return proc


def describe(proc: subprocess.CompletedProcess) -> str:
    """Everything a failing assertion should show about a client run."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


RECAP = re.compile(r"^localhost\s*:\s*(.*)$", re.M)


def recap(proc: subprocess.CompletedProcess) -> dict:
    """The counters of Ansible's PLAY RECAP line: {'ok': 7, 'changed': 0, 'failed': 0, ...}."""
    lines = RECAP.findall(proc.stdout)
    assert len(lines) == 1, describe(proc)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[0])}


def playbook_runner(ms, tmp_path: Path, playbook: Path):
    """play(**extra_vars) -> (process, recap counters): runs the playbook against ms, failing on any failed task."""
    env = cs_env(ms, tmp_path / "home",
                 ANSIBLE_PYTHON_INTERPRETER=CLIENTS_PYTHON,
                 ANSIBLE_LOCAL_TEMP=tmp_path / "ansible-local", ANSIBLE_REMOTE_TEMP=tmp_path / "ansible-remote",
                 ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
                 ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="false")

    def play(**extra_vars):
        args = [ANSIBLE_PLAYBOOK, "-i", "localhost,", playbook]
        for k, v in extra_vars.items():     # lists and dicts go as JSON (key=value would split them)
            args += ["-e", json.dumps({k: v}) if isinstance(v, (list, dict)) else f"{k}={v}"]
        proc = run(args, env=env, cwd=tmp_path, timeout=300)
        counts = recap(proc)
        assert proc.returncode == 0 and counts["failed"] == 0 and counts["unreachable"] == 0, describe(proc)
        return proc, counts
    return play
