"""`volstack agent`: run the host agent (wired into volstack/cli.py through add_parser and run)."""
import argparse
import fcntl
import logging
import os
import secrets
import socket
import sys

from volstack.private import restrict_umask, tighten
from volstack.stopsignal import StopSignal

log = logging.getLogger("volstack.agent")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", required=True,
                   help="directory for the token, request and task records and the guests' sockets")
    p.add_argument("--listen", default="127.0.0.1:0",
                   help="HOST:PORT to serve the agent protocol on (port 0: any free port); default 127.0.0.1:0")
    p.add_argument("--token", default=None,
                   help="the bearer token the management server must send (default: $VOLSTACK_AGENT_TOKEN, "
                        "else the state dir's token file, created with a new random token)")
    p.add_argument("--name", default=None, help="the host name to report (default: this machine's)")
    p.add_argument("--hypervisor", choices=("qemu", "simulator"), default="qemu",
                   help="qemu: real QEMU guests through QMP; simulator: guests in memory (storage is real)")
    p.add_argument("--max-transfers", type=int, default=None,
                   help="extract downloads and browser uploads served at once; more get 503 (default 16)")
    p.add_argument("--transfer-timeout", type=float, default=None,
                   help="seconds a transfer's client may send or take nothing before the transfer ends "
                        "(default 300)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("agent", help="run the host agent of this KVM host",
                              description="Run the volstack host agent: executes storage and guest commands "
                                          "for the management server.")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SystemExit(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8250")
    return host.strip("[]") or "127.0.0.1", int(port)


def load_token(state_dir: str, given: str | None) -> str:
    """The token from the option or the environment, else the state dir's token file (created 0600)."""
    token = given or os.environ.get("VOLSTACK_AGENT_TOKEN")
    if token:
        return token
    path = os.path.join(state_dir, "token")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as f:
            return f.read().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    with open(path) as f:
        return f.read().strip()


def lock_holder(state_dir) -> int | None:
    """The PID of the agent running with state_dir (the one holding its lock), or None."""
    path = os.path.join(os.path.abspath(state_dir), "agent.lock")
    try:
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return None                    # nobody holds it
            except BlockingIOError:
                f.seek(0)
                text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def build(args):
    """The agent server for parsed arguments, not yet started (tests and `volstack up` use this)."""
    from volstack.agent.commands import Agent
    from volstack.agent.server import AgentServer, Store
    state = os.path.abspath(args.state_dir)
    os.makedirs(state, mode=0o700, exist_ok=True)
    tighten(state)           # records, guest files and consoles of an older version: 0700 / 0600
    lock = open(os.path.join(state, "agent.lock"), "a+")     # not "w": that would erase the holder's PID
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another agent is running with state directory {state} (PID {lock_holder(state)})") \
            from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")       # who holds the lock: `volstack up` replaces an agent left running
    lock.flush()
    name = args.name or socket.gethostname()
    if args.hypervisor == "qemu":
        from volstack.agent.qemu import QemuHypervisor
        hv = QemuHypervisor(state, name)
    else:
        from volstack.agent.simulator import SimulatedHypervisor
        hv = SimulatedHypervisor(state, name)
    host, port = _listen(args.listen)
    from volstack.agent import transfer
    limit, idle = getattr(args, "max_transfers", None), getattr(args, "transfer_timeout", None)
    if (limit is not None and limit < 1) or (idle is not None and idle <= 0):
        raise SystemExit("--max-transfers and --transfer-timeout must be positive")
    slots = transfer.Slots(limit or transfer.MAX_TRANSFERS, idle or transfer.IDLE_TIMEOUT)
    server = AgentServer(Agent(name, hv), Store(os.path.join(state, "agent.db")), load_token(state, args.token),
                         host, port, slots)
    server.lock_file = lock
    return server


def run(args) -> int:
    restrict_umask()         # guest images, consoles and records are the agent user's only (volstack/private.py)
    # force: `volstack agent` comes through the volstack command, which configured logging (WARNING) already
    logging.basicConfig(level=getattr(logging, getattr(args, "log_level", "INFO")),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    stop = StopSignal()
    server = build(args).start()
    print(f"volstack agent {server.agent.hostname} ({server.agent.hv.name}) listening on {server.url}", flush=True)
    stop.wait()
    server.stop()
    log.info("agent stopped; guests keep running")
    return 0
