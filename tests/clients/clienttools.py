"""Shared helpers for the real-client acceptance tests: where the client virtualenvs live, a clean
environment for their processes, and running them."""
import os
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
