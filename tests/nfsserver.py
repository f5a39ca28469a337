"""A throwaway userspace NFS server for tests: nfs-ganesha (VFS backend) + rpcbind as plain processes.

No kernel NFS, no systemd, no dbus. Clients are QEMU/qemu-img (``nfs://`` via libnfs, NFSv3 only) and
libnfs-utils (``nfs-ls``, ``nfs-cp``). Listens on 127.0.0.1 only (rpcbind, when we have to start it,
binds all addresses: Debian 12's rpcbind crashes with ``-h``).

    srv = NfsServer(tmp_dir).start()      # exports tmp_dir/export as nfs://127.0.0.1/export
    srv.url                               # "nfs://127.0.0.1/export"
    srv.url_for("vol.qcow2")              # "nfs://127.0.0.1/export/vol.qcow2"
    srv.path_for("vol.qcow2")             # the same file in the local export directory
    srv.add_export("/pool2", some_dir)    # -> "nfs://127.0.0.1/pool2" (config reload, no restart)
    srv.remove_export("/pool2")
    srv.stop()

Only one ganesha can run per machine (it registers the NFS and MOUNT programs with the one portmapper),
so tests share one server: ``shared_server()`` returns the process-wide instance and starts it on first
use; the machine-wide lock file /tmp/volstack-ganesha.lock keeps two test runs from fighting over it.
Give each test its own export (``add_export``) or its own file names.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

LOCK_FILE = "/tmp/volstack-ganesha.lock"
HOST = "127.0.0.1"
# rpcbind's hard-coded files: the socket and lock it leaves behind, and the warm-start state it dumps on exit
RPCBIND_FILES = ("/run/rpcbind.sock", "/run/rpcbind.lock", "/run/rpcbind/rpcbind.xdr", "/run/rpcbind/portmap.xdr")


class NfsServerError(RuntimeError):
    pass


class NfsServerBusy(NfsServerError):
    """Another NFS server (or another test run's) already owns this machine's NFS ports."""


def _starttime(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): tells a PID from its reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, starttime: int | None = None) -> bool:
    st = _starttime(pid)
    if st is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return starttime is None or st == starttime


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _pids_named(comm: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == comm:
                        found.append(int(d))
            except OSError:
                pass
    return found


def _tcp_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def portmapper_running() -> bool:
    """True when a portmapper answers on 127.0.0.1:111."""
    if not _tcp_open(111):
        return False
    r = subprocess.run(["rpcinfo", "-p", HOST], capture_output=True, timeout=10)
    return r.returncode == 0


def _bind_addr(host: str) -> str:
    """ganesha 4.3 listens on IPv6 sockets and reads Bind_addr as an IPv6 address there: a plain
    "127.0.0.1" silently becomes in6addr_any, i.e. every address. The v4-mapped "::ffff:127.0.0.1" keeps it
    on IPv4 loopback, but ganesha resolves it with AI_ADDRCONFIG, which fails on a host without any
    non-loopback IPv6 address; then (only) fall back to the plain address and say so."""
    mapped = f"::ffff:{host}"
    try:
        socket.getaddrinfo(mapped, None, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_ADDRCONFIG)
        return mapped
    except socket.gaierror:
        warnings.warn(f"no IPv6 address configured on this host: nfs-ganesha will listen on all addresses "
                      f"(Bind_addr={host} is ignored by ganesha 4.3); tests still only talk to {host}")
        return host


def _stop_pid(pid: int, starttime: int | None, timeout: float = 10.0) -> None:
    """SIGTERM one process we started, wait for it to go, SIGKILL it after `timeout`."""
    if not _alive(pid, starttime):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    delay = 0.005
    while _alive(pid, starttime):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        try:   # reap it if it is our child (else it stays a zombie, which _alive treats as gone)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    try:   # a zombie child of ours: reap it
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait(what: str, probe, deadline: float, alive=lambda: True, why=lambda: "") -> None:
    """Poll `probe()` until it is true; fail when `alive()` turns false or at `deadline`."""
    delay = 0.01
    while not probe():
        if not alive():
            raise NfsServerError(f"{what}: the process died. {why()}")
        if time.monotonic() > deadline:
            raise NfsServerError(f"{what}: timed out. {why()}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


class NfsServer:
    def __init__(self, root_dir, *, pseudo: str = "/export", export_dir=None, port: int = 2049,
                 mnt_port: int = 20048, start_timeout: float = 30.0):
        self.root = Path(root_dir).resolve()
        self.host = HOST
        self.export = pseudo
        self.dir = Path(export_dir).resolve() if export_dir else self.root / "export"
        self.port = port
        self.mnt_port = mnt_port
        self.bind_addr = _bind_addr(self.host)
        self.start_timeout = start_timeout
        self.conf = self.root / "ganesha.conf"
        self.log = self.root / "ganesha.log"
        self.exports: dict[str, Path] = {}          # pseudo path -> directory
        self._ids: dict[str, int] = {}
        self._next_id = 1
        self._lock_fd: int | None = None
        self._ganesha: subprocess.Popen | None = None
        self._ganesha_st: int | None = None
        self._rpcbind: tuple[int, int | None] | None = None   # (pid, starttime) when we started it
        self._mutex = threading.RLock()

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        return f"nfs://{self.host}{self.export}"

    def url_for(self, name: str = "", pseudo: str | None = None) -> str:
        base = f"nfs://{self.host}{pseudo or self.export}"
        return f"{base}/{name.lstrip('/')}" if name else base

    def path_for(self, name: str = "", pseudo: str | None = None) -> Path:
        """The local path of `name` inside an export (the export is a local directory)."""
        d = self.exports[pseudo or self.export]
        return d / name.lstrip("/") if name else d

    def exists(self, name: str, pseudo: str | None = None) -> bool:
        """Does `name` exist in the export directory (checked directly on the local filesystem)?"""
        return self.path_for(name, pseudo).exists()

    @property
    def running(self) -> bool:
        return self._ganesha is not None and self._ganesha.poll() is None

    @property
    def pid(self) -> int | None:
        return self._ganesha.pid if self._ganesha else None

    # ------------------------------------------------------------------ lifecycle
    def start(self, wait: float | None = None) -> "NfsServer":
        """Start rpcbind (unless a portmapper runs already) and ganesha; return when the export answers.
        If another NFS server holds the machine, raise NfsServerBusy at once, or after waiting up to `wait`
        seconds for it to go away (default: $VOLSTACK_NFS_WAIT, else 0)."""
        if wait is None:
            wait = float(os.environ.get("VOLSTACK_NFS_WAIT") or 0)
        with self._mutex:
            if self.running:
                return self
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "recov").mkdir(exist_ok=True)
            self.dir.mkdir(parents=True, exist_ok=True)
            busy_until = time.monotonic() + wait
            while True:
                try:
                    self._take_lock()
                    try:
                        self._refuse_foreign_server()
                    except NfsServerBusy:
                        self._rpcbind = None     # an adopted orphan may serve the other server: leave it
                        self._release_lock()
                        raise
                    break
                except NfsServerBusy:
                    if time.monotonic() >= busy_until:
                        raise
                    time.sleep(0.2)
            try:
                deadline = time.monotonic() + self.start_timeout
                self._ensure_portmapper(deadline)
                self.exports = {self.export: self.dir}
                self._ids = {self.export: 1}
                self._next_id = 2
                self._write_conf()
                out = open(self.root / "ganesha.out", "ab")
                self._ganesha = subprocess.Popen(
                    ["ganesha.nfsd", "-F", "-f", str(self.conf), "-L", str(self.log),
                     "-p", str(self.root / "ganesha.pid"), "-N", "NIV_EVENT"],
                    cwd=self.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)
                out.close()
                self._ganesha_st = _starttime(self._ganesha.pid)
                self._record()
                _wait(f"nfs-ganesha serving {self.url}", lambda: self._reachable(self.export), deadline,
                      alive=lambda: self._ganesha.poll() is None, why=self._log_tail)
            except BaseException:
                self._shutdown()
                raise
            return self

    def stop(self) -> None:
        """Stop the processes this object started (by PID). Idempotent."""
        with self._mutex:
            self._shutdown()

    def __enter__(self) -> "NfsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ exports
    def add_export(self, pseudo: str, directory, timeout: float = 30.0) -> str:
        """Export `directory` as nfs://127.0.0.1<pseudo> (config edit + SIGHUP, no restart); returns the URL."""
        if not pseudo.startswith("/") or any(c in pseudo for c in ' ;{}"\n'):
            raise ValueError(f"bad pseudo path {pseudo!r}")
        directory = Path(directory).resolve()
        with self._mutex:
            self._check_running()
            if pseudo in self.exports:
                if self.exports[pseudo] == directory:
                    return self.url_for(pseudo=pseudo)
                raise NfsServerError(f"{pseudo} is already exported from {self.exports[pseudo]}")
            directory.mkdir(parents=True, exist_ok=True)
            self.exports[pseudo] = directory
            self._ids[pseudo] = self._next_id
            self._next_id += 1
            self._reload()
            _wait(f"export {pseudo} to appear", lambda: self._reachable(pseudo), time.monotonic() + timeout,
                  alive=lambda: self.running, why=self._log_tail)
            return self.url_for(pseudo=pseudo)

    def remove_export(self, pseudo: str, timeout: float = 30.0) -> None:
        with self._mutex:
            self._check_running()
            if pseudo == self.export:
                raise NfsServerError("the main export cannot be removed")
            if pseudo not in self.exports:
                return
            del self.exports[pseudo]
            del self._ids[pseudo]
            self._reload()
            _wait(f"export {pseudo} to go away", lambda: not self._reachable(pseudo),
                  time.monotonic() + timeout, alive=lambda: self.running, why=self._log_tail)

    def ls(self, pseudo: str | None = None) -> list[str]:
        """Names in an export, listed over NFSv3 with nfs-ls (a real client)."""
        r = subprocess.run(["nfs-ls", self.url_for(pseudo=pseudo)], capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise NfsServerError(f"nfs-ls {self.url_for(pseudo=pseudo)}: {r.stderr.strip()}")
        return [line.split()[-1] for line in r.stdout.splitlines() if line.split() and line.split()[-1] not in (".", "..")]

    # ------------------------------------------------------------------ internals
    def _check_running(self) -> None:
        if not self.running:
            raise NfsServerError("the NFS server is not running")

    def _reachable(self, pseudo: str) -> bool:
        """An NFSv3 client (portmapper -> MOUNT -> NFS) can list the export: what QEMU needs."""
        try:
            r = subprocess.run(["nfs-ls", f"nfs://{self.host}{pseudo}"], capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0

    def _log_tail(self) -> str:
        text = ""
        for f in (self.log, self.root / "ganesha.out"):
            try:
                text += "".join(f.read_text(errors="replace").splitlines(True)[-8:])
            except OSError:
                pass
        return f"(see {self.log}):\n{text}" if text else ""

    def _take_lock(self) -> None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = self._read_record(LOCK_FILE).get("owner")
            where = "this process" if holder == os.getpid() else f"process {holder}"
            raise NfsServerBusy(
                f"a volstack NFS server is already running, owned by {where} (lock {LOCK_FILE}); "
                "only one can run per machine: use nfsserver.shared_server() and add_export()") from None
        self._lock_fd = fd
        self._reap_orphans(self._read_record(LOCK_FILE))

    @staticmethod
    def _read_record(path) -> dict:
        try:
            with open(path) as f:
                return json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return {}

    def _record(self) -> None:
        """Write down (in the lock file) the PIDs we started, so a crashed run's orphans can be reaped."""
        rec = {"owner": os.getpid(), "root": str(self.root),
               "ganesha": [self._ganesha.pid, self._ganesha_st, str(self.conf)] if self._ganesha else None,
               "rpcbind": list(self._rpcbind) if self._rpcbind else None}
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, json.dumps(rec).encode(), 0)

    def _reap_orphans(self, rec: dict) -> None:
        """A previous run of this fixture died without stopping its processes (the lock was free, so its
        owner is gone). Stop exactly the PIDs it recorded, if they are still those very processes."""
        g = rec.get("ganesha")
        if g and _alive(g[0], g[1]) and g[2] in _cmdline(g[0]):
            _stop_pid(g[0], g[1])
        r = rec.get("rpcbind")
        if r and _alive(r[0], r[1]) and _cmdline(r[0])[:1] and _cmdline(r[0])[0].endswith("rpcbind"):
            self._rpcbind = (r[0], r[1])    # ours: adopt it (stopped, with its files, by stop())

    def _refuse_foreign_server(self) -> None:
        others = [p for p in _pids_named("ganesha.nfsd") if _alive(p)]     # zombies do not count
        if others:
            raise NfsServerBusy(f"nfs-ganesha is already running on this machine (pid {others}) and it is not "
                                "ours; only one can run per machine. Stop it (e.g. the lab's nfs-down.sh) first.")
        for port in (self.port, self.mnt_port):
            if _tcp_open(port):
                raise NfsServerBusy(f"something else listens on {HOST}:{port} (a kernel NFS server?); "
                                    "cannot start nfs-ganesha")

    def _ensure_portmapper(self, deadline: float) -> None:
        if self._rpcbind and _alive(*self._rpcbind):
            _wait("rpcbind", portmapper_running, deadline)
            return
        self._rpcbind = None
        if portmapper_running():
            return      # someone else's portmapper: use it, never stop it
        out = open(self.root / "rpcbind.log", "ab")
        p = subprocess.Popen(["rpcbind", "-f"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        out.close()
        self._rpcbind = (p.pid, _starttime(p.pid))
        self._rpcbind_popen = p
        self._record()
        _wait("rpcbind", portmapper_running, deadline, alive=lambda: p.poll() is None,
              why=lambda: (self.root / "rpcbind.log").read_text(errors="replace"))

    def _write_conf(self) -> None:
        blocks = [f"""NFS_CORE_PARAM {{
    Bind_addr = {self.bind_addr};
    NFS_Port = {self.port};
    MNT_Port = {self.mnt_port};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Mount_Path_Pseudo = true;
    Protocols = 3, 4;
}}
NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = "{self.root / 'recov'}"; }}
NFS_KRB5 {{ Active_krb5 = false; }}
MDCACHE {{ Dir_Chunk = 0; }}
"""]
        for pseudo, d in self.exports.items():
            blocks.append(f"""EXPORT {{
    Export_Id = {self._ids[pseudo]};
    Path = "{d}";
    Pseudo = "{pseudo}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3, 4;
    Transports = TCP;
    Attr_Expiration_Time = 0;
    FSAL {{ Name = VFS; }}
}}
""")
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text("".join(blocks))
        os.replace(tmp, self.conf)

    def _reload(self) -> None:
        self._write_conf()
        self._ganesha.send_signal(signal.SIGHUP)     # ganesha 4.x adds/removes EXPORT blocks on SIGHUP

    def _shutdown(self) -> None:
        if self._ganesha is not None:
            _stop_pid(self._ganesha.pid, self._ganesha_st)
            try:
                self._ganesha.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._ganesha = None
        if self._rpcbind is not None:
            _stop_pid(*self._rpcbind)
            p = getattr(self, "_rpcbind_popen", None)
            if p is not None:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                self._rpcbind_popen = None
            for f in RPCBIND_FILES:
                try:
                    os.unlink(f)
                except FileNotFoundError:
                    pass
            self._rpcbind = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)       # releases the flock
            self._lock_fd = None


# ---------------------------------------------------------------------- one server per process
_shared: NfsServer | None = None
_shared_owned_root: str | None = None
_shared_mutex = threading.Lock()


def shared_server() -> NfsServer:
    """The process-wide NFS server, started on first use (exports a fresh temp dir as nfs://127.0.0.1/export).
    It is stopped by stop_shared_server() or at interpreter exit."""
    global _shared, _shared_owned_root
    with _shared_mutex:
        if _shared is None or not _shared.running:
            root = tempfile.mkdtemp(prefix="volstack-nfs-")
            try:
                _shared = NfsServer(root).start()
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            _shared_owned_root = root
        return _shared


def stop_shared_server() -> None:
    global _shared, _shared_owned_root
    with _shared_mutex:
        if _shared is not None:
            _shared.stop()
            _shared = None
        if _shared_owned_root:
            shutil.rmtree(_shared_owned_root, ignore_errors=True)
            _shared_owned_root = None


atexit.register(stop_shared_server)
