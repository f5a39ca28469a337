"""The attack suite's harness (fixtures `stack` and `tenants` in conftest.py): one REAL `volstack up` (a
subprocess on its own data dir and port) for the whole session, and clients for the roles an attacker plays.

    def test_x(stack, tenants):
        stack.root.listZones()                 # cs clients (the `cs` library, as users run it)
        tenants.alice.api.listVolumes()        # plain user, account alice in domain attack-d1
        tenants.bob.api                        # plain user, account bob in domain attack-d2 (a sibling of d1)
        tenants.dadmin.api                     # domain admin of attack-d1
        stack.call(tenants.alice, "listVolumes", id=…)   # -> (status, body); never raises
        stack.login("alice", "pw", "/attack-d1")         # a password login: requests.Response
        stack.logs()                           # {path: text} of the server's and the agent's logs

Every response body any client of the stack received is kept in `stack.responses` (the secret search reads it).
The management server runs with -v (INFO) so that its log holds as much as an operator would collect. At the end
every VM is expunged through the API, the server is stopped by its PID (SIGTERM; `up` stops its agent) and any
guest QEMU left is killed by the PID in the agent's state dir.
"""
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests
from cs import CloudStack, CloudStackApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentproc import wait_until  # noqa: E402

VOLSTACK = str(Path(sys.executable).with_name("volstack"))
DOMAINS = ("attack-d1", "attack-d2")


class RecordingSession(requests.Session):
    """A requests session that keeps every response body (for the secret search)."""

    def __init__(self, sink: list):
        super().__init__()
        self._sink = sink

    def send(self, request, **kw):
        resp = super().send(request, **kw)
        self._sink.append(resp.text)
        return resp


@dataclass
class Tenant:
    name: str            # account and user name
    password: str
    domain: dict         # the domain as listDomains shows it
    account: dict
    user: dict
    key: str
    secret: str
    api: CloudStack

    @property
    def domain_path(self) -> str:
        return "/" + self.domain["name"]


class Stack:
    """A `volstack up` subprocess on data_dir."""

    def __init__(self, base: Path):
        self.base = base
        self.data = base / "data"
        self.stdout_path, self.log_path = base / "up.stdout", base / "up.log"
        self.responses: list[str] = []
        self.proc = None
        self.env: dict = {}

    def start(self, timeout=120) -> "Stack":
        self.proc = subprocess.Popen([VOLSTACK, "-v", "up", "--data-dir", str(self.data), "--port", "0"],
                                     stdout=open(self.stdout_path, "wb"), stderr=open(self.log_path, "wb"),
                                     stdin=subprocess.DEVNULL)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"volstack up exited with {self.proc.returncode}: {self.log_path.read_text()}")
            lines = self.stdout_path.read_text().splitlines()
            return lines if any(ln.startswith("# admin password") for ln in lines) else None
        lines = wait_until("volstack up to print its keys", ready, timeout=timeout, interval=0.1)
        self.env = dict(ln[len("export "):].split("=", 1) for ln in lines if ln.startswith("export "))
        self.endpoint = self.env["CLOUDSTACK_ENDPOINT"]
        self.admin_password = (self.data / "admin.password").read_text().strip()
        self.root = self.client(self.env["CLOUDSTACK_KEY"], self.env["CLOUDSTACK_SECRET"])
        return self

    def client(self, key: str, secret: str, **kw) -> CloudStack:
        return CloudStack(endpoint=self.endpoint, key=key, secret=secret, session=RecordingSession(self.responses),
                          **{"poll_interval": 0.05, "fetch_result": True, "timeout": 120, **kw})

    def call(self, who, command: str, **params) -> tuple[int, dict]:
        """One command as `who` (a Tenant or a CloudStack client): (HTTP status / error code, body). Never raises;
        async commands are waited for and give the job's result (its errorcode on failure)."""
        api = who.api if isinstance(who, Tenant) else who
        try:
            return 200, getattr(api, command)(**params)
        except CloudStackApiException as e:
            err = e.error or {}
            return int(err.get("errorcode") or err.get("jobresult", {}).get("errorcode") or 0), err

    def login(self, username: str, password: str, domain: str = "/") -> requests.Response:
        resp = requests.post(self.endpoint, data={"command": "login", "username": username, "password": password,
                                                  "domain": domain, "response": "json"}, timeout=30)
        self.responses.append(resp.text)
        return resp

    @property
    def agent_state(self) -> Path:
        return self.data / "agent"

    def logs(self) -> dict[Path, str]:
        """Every log the deployment writes: the server's (stderr of `up`), the agent's, the guests' consoles."""
        paths = [self.log_path, self.stdout_path, *self.data.rglob("*.log")]
        return {p: p.read_text(errors="replace") for p in paths if p.is_file()}

    def pids(self) -> list[int]:
        """The PIDs of volstack's processes: the server, its agent and the agent's children (guests, qemu-img)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for child in Path("/proc").glob(f"{pid}/task/*/children"):
                try:
                    todo += [int(c) for c in child.read_text().split()]
                except OSError:
                    pass
        return out + [p for p in self.guest_pids() if p not in out]

    def guest_pids(self) -> list[int]:
        pids = []
        for pidfile in self.agent_state.glob("vms/*/qemu.pid"):
            try:
                pid = int(pidfile.read_text().strip())
                if str(self.agent_state).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
            except (OSError, ValueError):
                pass
        return pids

    def stop(self):
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                for vm in self.root.listVirtualMachines(listall=True).get("virtualmachine", []):
                    self.call(self.root, "destroyVirtualMachine", id=vm["id"], expunge=True)
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            for pid in self.guest_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc = None


class Tenants:
    """alice (user, attack-d1), bob (user, attack-d2), dadmin (domain admin of attack-d1); more with .make()."""

    def __init__(self, stack: Stack):
        self.stack, self.made = stack, []
        root = stack.root
        self.domains = {}
        for name in DOMAINS:
            found = root.listDomains(name=name, listall=True).get("domain", [])
            self.domains[name] = found[0] if found else root.createDomain(name=name)["domain"]
        self.alice = self.make("alice", DOMAINS[0])
        self.bob = self.make("bob", DOMAINS[1])
        self.dadmin = self.make("dadmin", DOMAINS[0], accounttype=2)

    def make(self, name: str, domain: str, accounttype: int = 0, password: str | None = None) -> Tenant:
        """A new account `name` with one user of the same name and API keys."""
        root, dom = self.stack.root, self.domains[domain]
        password = password or f"pw-{name}-{os.getpid()}"
        acc = root.createAccount(username=name, password=password, accounttype=accounttype, domainid=dom["id"],
                                 email=f"{name}@example.test", firstname=name, lastname="attack")["account"]
        user = acc["user"][0]
        keys = root.registerUserKeys(id=user["id"])["userkeys"]
        tenant = Tenant(name, password, dom, acc, user, keys["apikey"], keys["secretkey"],
                        self.stack.client(keys["apikey"], keys["secretkey"]))
        self.made.append(tenant)
        return tenant

    def all(self) -> list[Tenant]:
        return [self.alice, self.bob, self.dadmin]


def error_of(status_body) -> tuple[int, str]:
    """(code, text) of a Stack.call result that failed."""
    status, body = status_body
    text = body.get("errortext") or body.get("jobresult", {}).get("errortext") or json.dumps(body)
    return status, text


def zone_id(stack) -> str:
    return stack.root.listZones(name="zone1")["zone"][0]["id"]


def offering(stack, kind: str, name: str) -> str:
    """The id of a built-in offering: kind 'disk' (Small, Custom) or 'service' (Small Instance)."""
    if kind == "disk":
        return stack.root.listDiskOfferings(name=name)["diskoffering"][0]["id"]
    return stack.root.listServiceOfferings(name=name)["serviceoffering"][0]["id"]


def builtin_template(stack) -> str:
    return stack.root.listTemplates(templatefilter="featured", name="volstack-tiny")["template"][0]["id"]

