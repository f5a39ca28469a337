"""Drive volstack's tiny test guest (scripts/build-guest.sh) from tests.

    from guest import GuestVM, pattern_sha256
    with GuestVM(tmp_path) as vm:                       # TCG QEMU, ~3 s until the guest is READY
        vm.qmp.cmd("blockdev-add", {"node-name": "n1", "driver": "qcow2",
                                    "file": {"driver": "file", "filename": str(img)}})
        vm.plug("n1", serial="vol1")                    # device_add virtio-blk-pci on a free root port
        vm.console.write("vol1", seed=7, mib=8)         # the guest writes the pattern (O_DIRECT + fsync)
        assert vm.console.checksum("vol1", 8) == pattern_sha256(7, 8)
        b = vm.console.bench("read", "vol1", "4k", 256) # -> Bench(bytes, ns, ops); b.iops, b.mib_per_s
        vm.unplug("vol1-dev")                           # device_del, waits for DEVICE_DELETED

A console connected to a guest that is already booting (no -S) may miss READY: use
GuestConsole(path).ping_until_ready() instead of wait_ready().

GuestConsole speaks the exerciser's line protocol (documented in scripts/build-guest.sh) over the
QEMU serial chardev's unix socket; Qmp is a small QMP client. Every wait has a deadline; nothing sleeps
to synchronise.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "build-guest.sh"
READY = "VOLSTACK-GUEST READY"
MiB = 1 << 20


# ---------------------------------------------------------------------- the image
def guest_image_dir() -> Path:
    """Build the guest if needed (scripts/build-guest.sh, ~2 s, cached) and return its directory
    (vmlinuz, initrd.img)."""
    r = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"scripts/build-guest.sh failed:\n{r.stderr}")
    d = Path(r.stdout.strip().splitlines()[-1])
    if not (d / "vmlinuz").is_file() or not (d / "initrd.img").is_file():
        raise RuntimeError(f"scripts/build-guest.sh did not produce {d}/vmlinuz and initrd.img")
    return d


def pattern_bytes(seed: int, mib: int) -> bytes:
    """What `write SERIAL SEED MIB` writes: MiB i is "volstack seed=SEED mib=i\\n" repeated, cut at 1 MiB."""
    return b"".join(_pattern_mib(seed, i) for i in range(mib))


def _pattern_mib(seed: int, i: int) -> bytes:
    line = f"volstack seed={seed} mib={i}\n".encode()
    return (line * (MiB // len(line) + 1))[:MiB]


def pattern_sha256(seed: int, mib: int) -> str:
    h = hashlib.sha256()
    for i in range(mib):
        h.update(_pattern_mib(seed, i))
    return h.hexdigest()


# ---------------------------------------------------------------------- line-buffered unix socket
class _LineSocket:
    """A unix stream socket read line by line with deadlines (own buffer + select: a socket.makefile()
    object is unusable after its first timeout)."""

    def __init__(self, path, connect_timeout: float = 10.0, alive=None):
        deadline = time.monotonic() + connect_timeout
        delay = 0.005
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if alive is not None and not alive():
                    raise ConnectionError(f"{path}: QEMU exited before its socket was up")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cannot connect to {path}")
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        self.sock = s
        self._buf = b""

    def readline(self, deadline: float) -> str:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError("no complete line before the deadline")
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the other end closed the socket")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace").rstrip("\r")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------- the guest console
class GuestError(RuntimeError):
    def __init__(self, command: str, rc: int, lines: list[str]):
        super().__init__(f"guest command {command!r} failed (rc={rc}): {' | '.join(lines)}")
        self.rc = rc
        self.lines = lines


@dataclass
class Bench:
    bytes: int
    ns: int
    ops: int

    @property
    def seconds(self) -> float:
        return self.ns / 1e9

    @property
    def mib_per_s(self) -> float:
        return self.bytes / MiB / self.seconds

    @property
    def iops(self) -> float:
        return self.ops / self.seconds


class GuestConsole:
    """The exerciser's protocol on the guest serial console (a QEMU `-chardev socket,server=on` path).
    Commands are tagged (#N) so kernel messages or leftovers on the console are never mistaken for answers.
    `transcript` keeps every line received (handy in assertion messages)."""

    def __init__(self, path, connect_timeout: float = 10.0, timeout: float = 60.0, alive=None):
        self._sock = _LineSocket(path, connect_timeout, alive)
        self.timeout = timeout
        self.transcript: list[str] = []
        self._tags = itertools.count(1)

    def wait_for(self, pattern: str, timeout: float | None = None) -> re.Match:
        """Read lines until one matches the regular expression `pattern` (searched); return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                line = self._sock.readline(deadline)
            except TimeoutError:
                raise TimeoutError(f"guest console: no line matching {pattern!r}; last lines:\n"
                                   + "\n".join(self.transcript[-15:])) from None
            self.transcript.append(line)
            m = rx.search(line)
            if m:
                return m

    def wait_ready(self, timeout: float = 120.0) -> str:
        """Wait for the guest's READY marker (after boot); returns the line."""
        return self.wait_for(re.escape(READY) + r".*", timeout).group(0)

    def run(self, *words, timeout: float | None = None, check: bool = True) -> list[str]:
        """Send one command, return its output lines (tag stripped, END excluded). Raises GuestError when
        the command ends with a non-zero rc and `check` is true."""
        tag = f"#{next(self._tags)}"
        command = " ".join(str(w) for w in words)
        if "\n" in command:
            raise ValueError("one line per command")
        sent = f"{tag} {command}"
        self._sock.send(f"{sent}\n".encode())
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out: list[str] = []
        while True:
            try:
                line = self._sock.readline(deadline)
            except TimeoutError:
                raise TimeoutError(f"guest command {command!r}: no answer in time; last lines:\n"
                                   + "\n".join(self.transcript[-15:])) from None
            self.transcript.append(line)
            if not line.startswith(tag + " ") or line == sent:   # not ours, or the tty echoing our line
                continue                                           # (before the guest turned echo off)
            body = line[len(tag) + 1:]
            if body.startswith("END "):
                rc = int(body.split()[1])
                if rc and check:
                    raise GuestError(command, rc, out)
                return out
            out.append(body)

    def _one(self, prefix: str, *words, **kw) -> list[str]:
        for line in self.run(*words, **kw):
            if line.startswith(prefix + " "):
                return line.split()[1:]
        raise GuestError(" ".join(map(str, words)), 0, [f"no {prefix} line"])

    # -- commands
    def ping(self, timeout: float | None = None) -> None:
        if "PONG" not in self.run("ping", timeout=timeout):
            raise GuestError("ping", 0, ["no PONG"])

    def ping_until_ready(self, timeout: float = 120.0, attempt: float = 2.0) -> None:
        """For a console connected after boot began (READY may already be gone): ping until the guest
        answers. Each attempt waits `attempt` seconds; late answers to earlier pings are ignored (tags)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ping(timeout=min(attempt, max(0.1, deadline - time.monotonic())))
                return
            except (TimeoutError, GuestError):
                if time.monotonic() >= deadline:
                    raise TimeoutError("the guest did not answer ping in time; last lines:\n"
                                       + "\n".join(self.transcript[-15:])) from None

    def disks(self) -> dict[str, tuple[str, int]]:
        """serial -> (kernel name, size in bytes) of the disks the guest sees."""
        found = {}
        for line in self.run("disks"):
            parts = line.split()
            if parts[0] == "DISK" and len(parts) == 4:
                found[parts[2]] = (parts[1], int(parts[3]))
        return found

    def dev(self, serial: str, timeout: float = 10.0) -> str:
        """The guest device (/dev/vdX) of the disk with this serial; waits for a hot-plugged one."""
        return self._one("DEV", "dev", serial, int(timeout), timeout=timeout + self.timeout)[0]

    def write(self, serial: str, seed: int, mib: int, offset_mib: int = 0, timeout: float | None = None) -> int:
        """Write pattern_bytes(seed, mib) at offset_mib (O_DIRECT, then fsync); returns bytes written."""
        return int(self._one("WROTE", "write", serial, seed, mib, offset_mib, timeout=timeout)[0])

    def checksum(self, serial: str, mib: int, offset_mib: int = 0, timeout: float | None = None) -> str:
        """sha256 (hex) of `mib` MiB read with O_DIRECT from offset_mib."""
        return self._one("SUM", "sum", serial, mib, offset_mib, timeout=timeout)[0]

    def bench(self, op: str, serial: str, bs="4k", count: int = 256, timeout: float | None = None) -> Bench:
        """One O_DIRECT dd of `count` blocks of `bs` (read: to /dev/null; write: zeros). For QoS tests."""
        b, ns, ops = self._one("BENCH", "bench", op, serial, bs, count, timeout=timeout)
        return Bench(int(b), int(ns), int(ops))

    def bench_read(self, serial: str, mib: int, bs="1M", timeout: float | None = None) -> Bench:
        b, ns, ops = self._one("BENCH", "bench-read", serial, mib, bs, timeout=timeout)
        return Bench(int(b), int(ns), int(ops))

    def bench_write(self, serial: str, mib: int, bs="1M", timeout: float | None = None) -> Bench:
        b, ns, ops = self._one("BENCH", "bench-write", serial, mib, bs, timeout=timeout)
        return Bench(int(b), int(ns), int(ops))

    def sh(self, command: str, timeout: float | None = None, check: bool = True) -> list[str]:
        """Run a busybox shell command line in the guest; its output lines."""
        return self.run("sh", command, timeout=timeout, check=check)

    def close(self) -> None:
        self._sock.close()


# ---------------------------------------------------------------------- QMP
class QmpError(RuntimeError):
    def __init__(self, command: str, error: dict):
        super().__init__(f"{command}: {error.get('class')}: {error.get('desc')}")
        self.cls = error.get("class")
        self.desc = error.get("desc")


class Qmp:
    """A minimal QMP client: cmd() returns the 'return' value, events are kept for wait_event()."""

    def __init__(self, path, connect_timeout: float = 10.0, timeout: float = 30.0, alive=None):
        self._sock = _LineSocket(path, connect_timeout, alive)
        self.timeout = timeout
        self.events: list[dict] = []
        self._ids = itertools.count(1)
        self.greeting = self._read(time.monotonic() + timeout)
        self.cmd("qmp_capabilities")

    def _read(self, deadline: float) -> dict:
        return json.loads(self._sock.readline(deadline))

    def cmd(self, name: str, args: dict | None = None, timeout: float | None = None, **kw):
        """Execute `name` with `args` (a dict, for hyphenated keys) updated by **kw."""
        msg_id = next(self._ids)
        msg = {"execute": name, "id": msg_id}
        arguments = {**(args or {}), **kw}
        if arguments:
            msg["arguments"] = arguments
        self._sock.send(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            r = self._read(deadline)
            if "event" in r:
                self.events.append(r)
            elif r.get("id") == msg_id:
                if "error" in r:
                    raise QmpError(name, r["error"])
                return r.get("return")

    def wait_event(self, name: str, timeout: float | None = None, **match) -> dict:
        """Wait for (and consume) an event called `name` whose data contains `match`."""
        def ok(ev):
            return ev.get("event") == name and all(ev.get("data", {}).get(k) == v for k, v in match.items())
        for i, ev in enumerate(self.events):
            if ok(ev):
                return self.events.pop(i)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            r = self._read(deadline)
            if "event" in r:
                if ok(r):
                    return r
                self.events.append(r)

    def close(self) -> None:
        self._sock.close()


# ---------------------------------------------------------------------- a QEMU running the guest
class GuestVM:
    """qemu-system-x86_64 (TCG: KVM here cannot run a real kernel) booting the test guest, with a QMP
    socket, the exerciser console and `root_ports` pcie-root-ports for hot-plugged disks.
    Started paused (-S) so the console is connected before the guest prints anything."""

    def __init__(self, workdir, *, memory_mib: int = 128, root_ports: int = 4, extra_args=(),
                 append: str = "", name: str = "guest"):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.memory_mib = memory_mib
        self.root_ports = root_ports
        self.extra_args = list(extra_args)
        self.append = append
        self._sockdir: Path | None = None           # made by start()
        self.qmp_path: Path | None = None
        self.console_path: Path | None = None
        self.console_log = self.dir / f"{name}-console.log"
        self.proc: subprocess.Popen | None = None
        self.qmp: Qmp | None = None
        self.console: GuestConsole | None = None
        self.ready_line = ""
        self._ports_used: dict[str, str] = {}      # device id -> root port id
        for a in self.extra_args:                   # root ports taken by devices in extra_args (bus=rpN)
            for m in re.finditer(r"\bbus=(rp\d+)\b", a):
                self._ports_used[f"extra-{m.group(1)}"] = m.group(1)
        self.boot_seconds = 0.0

    def start(self, ready_timeout: float = 120.0) -> "GuestVM":
        image = guest_image_dir()
        # unix socket paths must stay short (108 bytes): keep them out of deep pytest tmp dirs
        self._sockdir = Path(tempfile.mkdtemp(prefix="vsguest-", dir="/tmp"))
        self.qmp_path = self._sockdir / "qmp.sock"
        self.console_path = self._sockdir / "console.sock"
        args = ["qemu-system-x86_64", "-name", self.name, "-accel", "tcg,tb-size=32", "-machine", "q35",
                "-cpu", "max", "-smp", "1", "-m", str(self.memory_mib), "-nodefaults", "-no-user-config",
                "-display", "none", "-no-reboot", "-S",
                "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
                "-append", f"console=ttyS0 quiet panic=-1 {self.append}".strip(),
                "-chardev", f"socket,id=con0,path={self.console_path},server=on,wait=off,logfile={self.console_log}",
                "-serial", "chardev:con0",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        for i in range(1, self.root_ports + 1):
            args += ["-device", f"pcie-root-port,id=rp{i},chassis={i}"]
        args += self.extra_args
        t0 = time.monotonic()
        try:
            with open(self.dir / f"{self.name}-qemu.log", "wb") as log:
                self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            alive = lambda: self.proc.poll() is None  # noqa: E731
            self.qmp = Qmp(self.qmp_path, alive=alive)
            self.console = GuestConsole(self.console_path, alive=alive)
            self.qmp.cmd("cont")
            self.ready_line = self.console.wait_ready(ready_timeout)
            self.boot_seconds = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    # -- disks
    def plug(self, node: str, serial: str, device_id: str | None = None, **props) -> str:
        """device_add a virtio-blk-pci for block node `node` on a free root port; returns the device id.
        Waits until the guest sees the disk."""
        dev_id = device_id or f"{serial}-dev"
        free = [f"rp{i}" for i in range(1, self.root_ports + 1) if f"rp{i}" not in self._ports_used.values()]
        if not free:
            raise RuntimeError("no free pcie-root-port: start GuestVM with more root_ports")
        self.qmp.cmd("device_add", {"driver": "virtio-blk-pci", "id": dev_id, "bus": free[0], "drive": node,
                                    "serial": serial, **props})
        self._ports_used[dev_id] = free[0]
        self.console.dev(serial)
        return dev_id

    def unplug(self, device_id: str, node: str | None = None, timeout: float = 30.0) -> None:
        """device_del (the guest acks the ACPI eject) and, if `node` is given, blockdev-del it."""
        self.qmp.cmd("device_del", id=device_id)
        self.qmp.wait_event("DEVICE_DELETED", timeout=timeout, device=device_id)
        self._ports_used.pop(device_id, None)
        if node:
            self.qmp.cmd("blockdev-del", {"node-name": node})

    # -- lifecycle
    def stop(self, timeout: float = 10.0) -> None:
        """Quit QEMU (QMP quit, then SIGKILL of the PID we started if it lingers)."""
        if self.proc is None:
            self._remove_sockdir()
            return
        if self.proc.poll() is None and self.qmp is not None:
            try:
                self.qmp.cmd("quit", timeout=5)
            except (OSError, EOFError, TimeoutError, QmpError, ValueError):
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for c in (self.qmp, self.console):
            if c is not None:
                c.close()
        self.qmp = self.console = None
        self.proc = None
        self._remove_sockdir()

    def _remove_sockdir(self) -> None:
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None

    def __enter__(self) -> "GuestVM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
