"""Agents as real subprocesses (`python -m volstack.agent`), for the agent tests and the control plane's."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from volstack.agent.client import AgentClient

ROOT = Path(__file__).resolve().parents[1]


class AgentProcess:
    def __init__(self, state_dir: Path, hypervisor: str = "qemu", name: str = "host1", token: str | None = None,
                 args: tuple = ()):
        """args: more `volstack agent` options, e.g. ("--max-transfers", "1")."""
        self.state_dir, self.hypervisor, self.name, self._token = Path(state_dir), hypervisor, name, token
        self.args = tuple(args)
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 30, listen: str = "127.0.0.1:0") -> "AgentProcess":
        cmd = [sys.executable, "-m", "volstack.agent", "--state-dir", str(self.state_dir), "--name", self.name,
               "--hypervisor", self.hypervisor, "--listen", listen, *self.args]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if self._token:
            env["VOLSTACK_AGENT_TOKEN"] = self._token
        self.log = open(self.state_dir.parent / f"{self.state_dir.name}-agent.log", "ab")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
                                     env=env, cwd=ROOT)
        line = self.proc.stdout.readline().decode()   # the agent prints its URL once it listens
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"agent did not start: {line!r}; log {self.log.name}")
        self.url = m.group(1)
        self.client = AgentClient(self.url, self.token, timeout=timeout)
        return self

    @property
    def token(self) -> str:
        return self._token or (self.state_dir / "token").read_text().strip()

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.proc = None

    def restart(self, sig=signal.SIGKILL, keep_port: bool = False) -> "AgentProcess":
        """keep_port: listen on the same address again (the management server knows the host by its URL)."""
        listen = self.url.removeprefix("http://").rstrip("/") if keep_port else "127.0.0.1:0"
        self.stop(sig)
        return self.start(listen=listen)

    def guest_pids(self) -> list[int]:
        pids = []
        for pidfile in self.state_dir.glob("vms/*/qemu.pid"):
            try:
                pid = int(pidfile.read_text().strip())
                if str(self.state_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
            except (OSError, ValueError):
                pass
        return pids

    def kill_guests(self) -> None:
        for pid in self.guest_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_until(what: str, probe, timeout: float = 30, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
