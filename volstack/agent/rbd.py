"""The RBD pool adapter (pool type "RBD"): images in a Ceph pool through librados/librbd.

A pool spec from the management server is {"uuid", "type": "RBD", "path": <ceph pool>, "monitors":
["host[:port]", ...], "user": <cephx id>, "key": <cephx secret>, "heartbeat_seconds"}. The key only
ever travels inside the agent protocol's request body; here it goes to librados as a config value
(in memory), to qemu-img as a `secret` object read from a 0600 file that exists for one call, and to
QEMU guests as a QMP `object-add` secret. It is never put on a command line, in a conf file or a log.

Every connection sets client_mount_timeout, rados_mon_op_timeout and rados_osd_op_timeout so an
unreachable monitor, a wrong key or a full cluster fails in seconds instead of hanging. Monitors with
an explicit port other than 6789 are addressed as msgr2 (`v2:host:port`): with a bare `host:port`
librados tries msgr1 and msgr2 on the same port and keeps hunting after a refused key.
"""
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import re
import socket
import struct
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

from volstack.agent import programs
from volstack.agent.errors import Busy, Failed, InvalidArgument, NotFound, Unavailable
from volstack.agent.images import Pool, check_name, check_size

log = logging.getLogger("volstack.agent.rbd")
CONNECT_TIMEOUT = 3      # seconds: monitors unreachable (a refused key fails at once over msgr2)
MON_OP_TIMEOUT = 10
# a full or stuck cluster fails an operation instead of blocking it forever (tests shorten it)
OSD_OP_TIMEOUT = int(os.environ.get("VOLSTACK_RBD_OSD_OP_TIMEOUT") or 30)
BASE_SNAP = "volstack-base"
HEARTBEAT_OBJECT = "volstack.heartbeat"
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def bindings():
    """(rados, rbd): the Debian python3-rados/python3-rbd modules. A venv does not see Debian's
    dist-packages; only these two extension files are loaded from there, nothing else leaks in."""
    try:
        import rados
        import rbd
        return rados, rbd
    except ImportError:
        pass
    mods = []
    for name in programs.PYTHON_MODULES:
        if name in sys.modules:
            mods.append(sys.modules[name])
            continue
        path = next((os.path.join(programs.DEBIAN_PYTHON, name + sfx) for sfx in importlib.machinery.EXTENSION_SUFFIXES
                     if os.path.exists(os.path.join(programs.DEBIAN_PYTHON, name + sfx))), None)
        if path is None:
            raise Failed("the Ceph Python bindings are not installed on this host (Debian packages python3-rados "
                         "and python3-rbd; scripts/install-host.sh installs them)")
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod      # rbd imports rados by name
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            del sys.modules[name]
            raise Failed(f"the Ceph Python binding {path} does not load in this Python: {e}") from None
        mods.append(mod)
    return tuple(mods)


def mon_host(monitors) -> str:
    """librados' mon_host for ["host[:port]", ...]; names are resolved here so a typo fails at once."""
    if isinstance(monitors, str):
        monitors = [m for m in monitors.split(",") if m]
    if not isinstance(monitors, list) or not monitors or len(monitors) > 16:
        raise InvalidArgument("monitors must be a list of 1 to 16 host[:port] strings")
    out = []
    for m in monitors:
        if not isinstance(m, str):
            raise InvalidArgument(f"invalid monitor {m!r}")
        host, port = m, None
        found = re.match(r"^\[([0-9A-Fa-f:.]+)\](?::(\d+))?$", m) or re.match(r"^([A-Za-z0-9.-]+)(?::(\d+))?$", m)
        if not found:
            raise InvalidArgument(f"invalid monitor address {m!r}: use host or host:port")
        host, port = found.group(1), int(found.group(2)) if found.group(2) else None
        try:
            ip = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0]
        except OSError as e:
            raise Unavailable(f"cannot resolve Ceph monitor {host}: {e.strerror or e}") from None
        ip = f"[{ip}]" if ":" in ip else ip
        if port is None:
            out.append(ip)
        elif port == 6789:
            out.append(f"v1:{ip}:6789")
        else:
            out.append(f"v2:{ip}:{port}")
    return ",".join(out)


_clusters: dict = {}
_clusters_lock = threading.Lock()
_CRYPTO_AES = 1


def cephx_key_valid(key: str) -> bool:
    """Whether key is what librados can decode: base64 of a CryptoKey (u16 type AES, u32+u32 created, u16 length,
    then that many secret bytes). librados prints a key it cannot decode to stderr ("failed to decode key '<key>'")
    before any of its logging options apply, so a malformed key must never reach it."""
    import base64
    import binascii
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) < 12:
        return False
    kind, _sec, _nsec, length = struct.unpack_from("<HIIH", raw)
    return kind == _CRYPTO_AES and length in (16, 32) and len(raw) == 12 + length


def _cluster(mons: str, user: str, key: str):
    """A connected librados handle, shared by the agent's threads (librados is thread-safe)."""
    rados, _ = bindings()
    ident = (mons, user, hashlib.sha256(key.encode()).hexdigest())
    with _clusters_lock:
        c = _clusters.get(ident)
        if c is not None and c.state == "connected":
            return c
        if not cephx_key_valid(key):
            raise InvalidArgument(f"the key of cephx user {user} is not a cephx key (the base64 string after 'key =' "
                                  f"in `ceph auth get client.{user}`)")
        c = rados.Rados(rados_id=user, conf={
            "mon_host": mons, "key": key, "client_mount_timeout": str(CONNECT_TIMEOUT),
            "rados_mon_op_timeout": str(MON_OP_TIMEOUT), "rados_osd_op_timeout": str(OSD_OP_TIMEOUT),
            "log_to_stderr": "false", "err_to_stderr": "false"})
        try:
            c.connect()
        except rados.PermissionDeniedError:
            raise Unavailable(f"the Ceph monitors at {mons} refused cephx user {user}: wrong key, or the user does "
                              f"not exist (check `ceph auth get client.{user}`)") from None
        except (rados.TimedOut, rados.Error) as e:
            text = str(e)
            if "timed out" in text.lower() or isinstance(e, rados.TimedOut) or "110" in text:
                raise Unavailable(f"no Ceph monitor answered at {mons} within {CONNECT_TIMEOUT} s (are the monitors "
                                  "up and reachable from this host?)") from None
            raise Unavailable(f"cannot connect to the Ceph monitors at {mons}: {text}") from None
        _clusters[ident] = c
        return c


def _forget(mons: str, user: str, key: str) -> None:
    with _clusters_lock:
        c = _clusters.pop((mons, user, hashlib.sha256(key.encode()).hexdigest()), None)
    if c is not None:
        try:
            c.shutdown()
        except Exception:
            pass


def _conf_dir() -> str:
    d = os.path.join(tempfile.gettempdir(), f"volstack-rbd-{os.getuid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


class RbdPool(Pool):
    preallocation = {"thin": {"raw": None}, "sparse": {"raw": None}, "fat": {"raw": None}}   # RBD is thin
    formats = ("raw",)

    def __init__(self, spec: dict, hostname: str):
        self.uuid, self.hostname = spec.get("uuid"), hostname
        self.pool = spec.get("path")
        if not isinstance(self.pool, str) or not re.match(r"^[A-Za-z0-9_.-]{1,255}$", self.pool):
            raise InvalidArgument(f"pool {self.uuid}: invalid Ceph pool name {self.pool!r}")
        self.user, self.key = spec.get("user"), spec.get("key")
        if not isinstance(self.user, str) or not _ID.match(self.user):
            raise InvalidArgument(f"pool {self.uuid}: invalid cephx user {self.user!r}")
        if not isinstance(self.key, str) or not re.match(r"^[A-Za-z0-9+/=]{16,128}$", self.key):
            raise InvalidArgument(f"pool {self.uuid}: the cephx key must be the base64 secret")
        self.monitors = spec.get("monitors")
        self.mons = mon_host(self.monitors)
        self.heartbeat_seconds = spec.get("heartbeat_seconds") or 10
        self.secret_id = "volstack-key-" + re.sub(r"[^A-Za-z0-9]", "", str(self.uuid))[:40]

    # ---- librados / librbd

    def _rbd(self):
        return bindings()[1]

    @contextmanager
    def ioctx(self):
        rados, rbd = bindings()
        c = _cluster(self.mons, self.user, self.key)
        try:
            io = c.open_ioctx(self.pool)
        except rados.ObjectNotFound:
            raise NotFound(f"Ceph pool {self.pool} does not exist (create it with `ceph osd pool create {self.pool}` "
                           f"and `rbd pool init {self.pool}`)") from None
        except rados.PermissionDeniedError:
            raise Unavailable(f"cephx user {self.user} may not use Ceph pool {self.pool} (its osd caps need "
                              f"'profile rbd pool={self.pool}')") from None
        except rados.Error as e:
            _forget(self.mons, self.user, self.key)
            raise Unavailable(f"Ceph pool {self.pool}: {e}") from None
        try:
            yield io
        except rbd.ImageNotFound as e:
            raise NotFound(f"pool {self.uuid}: no such RBD image ({e})") from None
        except rbd.ImageBusy as e:
            raise Busy(f"pool {self.uuid}: the RBD image is in use ({e})") from None
        except (rados.TimedOut, rbd.Error, rados.Error) as e:
            if "timed out" in str(e).lower() or "110" in str(e):
                raise Unavailable(f"Ceph pool {self.pool} did not answer within {OSD_OP_TIMEOUT} s "
                                  "(cluster full or OSDs down?)") from None
            raise Failed(f"RBD pool {self.uuid} (Ceph pool {self.pool}): {e}") from None
        finally:
            io.close()

    @contextmanager
    def image(self, name: str, snapshot: str | None = None, read_only: bool = False):
        with self.ioctx() as io:
            img = self._rbd().Image(io, name, snapshot=snapshot, read_only=read_only)
            try:
                yield img
            finally:
                img.close()

    # ---- the Pool interface

    def connect(self) -> dict:
        with self.ioctx() as io:
            self._rbd().RBD().list(io)     # proves the pool exists and the caps allow rbd
        return self.stats()

    def stats(self) -> dict:
        with self.ioctx() as io:
            used = io.get_stats()["num_bytes"]
        st = _cluster(self.mons, self.user, self.key).get_cluster_stats()
        heartbeats.add(self)      # a pool the management server uses here: beat for this host
        if not st["kb"]:
            # cluster statistics come from ceph-mgr: without one, Ceph reports zeros
            return {"used": used, "note": "no ceph-mgr statistics: capacity unknown"}
        return {"capacity": st["kb"] * 1024, "used": used, "available": st["kb_avail"] * 1024}

    def list(self, path: str) -> list:
        if path not in (None, "", ".", "/"):
            raise NotFound(f"RBD pool {self.uuid} has no directories (asked for {path!r})")
        out = []
        with self.ioctx() as io:
            rbd = self._rbd()
            for name in sorted(rbd.RBD().list(io)):
                try:
                    img = rbd.Image(io, name, read_only=True)
                except rbd.ImageNotFound:
                    continue      # removed meanwhile
                try:
                    out.append({"name": name, "isdirectory": False, "size": img.size(),
                                "lastupdated": int(img.modify_timestamp().timestamp()), "format": "raw",
                                "_probe": None})
                finally:
                    img.close()
        return out

    def exists(self, name: str) -> bool:
        with self.ioctx() as io:
            return name in self._rbd().RBD().list(io)

    def remove(self, name: str) -> bool:
        """A base image whose only snapshot is the unused base snapshot goes with it; any other snapshot
        (a volume's) keeps the image."""
        rbd = self._rbd()
        with self.ioctx() as io:
            try:
                rbd.RBD().remove(io, name)
                return True
            except rbd.ImageNotFound:
                return False
            except rbd.ImageHasSnapshots:
                pass
        if [s["name"] for s in self.snapshots(name)] != [BASE_SNAP]:
            raise Busy(f"RBD image {name} in pool {self.uuid} has snapshots; delete them first")
        self.snapshot_remove(name, BASE_SNAP)      # Busy while clones still depend on it
        return self.remove(name)

    def rename(self, src: str, dst: str) -> None:
        with self.ioctx() as io:
            self._rbd().RBD().rename(io, src, dst)

    def _conf(self) -> str:
        """A conf file with the monitors and timeouts (no secret), for qemu-img and QEMU."""
        path = os.path.join(_conf_dir(), hashlib.sha256(self.mons.encode()).hexdigest()[:16] + ".conf")
        text = (f"[global]\nmon_host = {self.mons}\nclient_mount_timeout = {CONNECT_TIMEOUT * 2}\n"
                f"rados_mon_op_timeout = {MON_OP_TIMEOUT}\nlog_to_stderr = false\nerr_to_stderr = false\n")
        try:
            with open(path) as f:
                if f.read() == text:
                    return path
        except FileNotFoundError:
            pass
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        return path

    def blockdev(self, name: str) -> dict:
        return {"driver": "rbd", "pool": self.pool, "image": name, "conf": self._conf(), "user": self.user,
                "key-secret": self.secret_id}

    def target(self, name: str) -> str:
        return "json:" + json.dumps({"file": self.blockdev(name)}, separators=(",", ":"))

    def qmp_objects(self) -> list:
        return [{"qom-type": "secret", "id": self.secret_id, "data": self.key, "format": "base64"}]

    @contextmanager
    def qemu_img_objects(self):
        fd, path = tempfile.mkstemp(prefix="key-", dir=_conf_dir())   # mkstemp: 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.key)
            yield ["--object", f"secret,id={self.secret_id},file={path},format=base64"]
        finally:
            os.unlink(path)

    def make_image(self, name: str, size: int, fmt: str) -> None:
        if fmt != "raw":
            raise InvalidArgument(f"RBD pools hold raw images only, not {fmt}")
        rbd = self._rbd()
        with self.ioctx() as io:
            rbd.RBD().create(io, name, size, old_format=False, features=rbd.RBD_FEATURE_LAYERING)

    def prepare_target(self, name: str, size: int, fmt: str) -> list:
        """qemu-img cannot create an RBD image it then opens with a secret: make it, convert with -n."""
        self.make_image(name, size, fmt)
        return ["-n"]

    def disconnect(self) -> None:
        heartbeats.drop(self.uuid)

    # ---- RBD beyond the Pool interface

    def resize_image(self, name: str, size: int) -> int:
        check_size(size)
        with self.image(name) as img:
            img.resize(size)
            return img.size()

    def import_base(self, base: str, fill) -> dict:
        """The template's base image, made once: fill(pool, name) writes it under a temporary name, then it
        gets the protected snapshot clones are made from. An existing complete base is kept as it is."""
        check_name(base)
        if self.exists(base):
            with self.image(base) as img:
                snaps = {s["name"] for s in img.list_snaps()}
                if BASE_SNAP in snaps and img.is_protected_snap(BASE_SNAP):
                    return {"name": base, "snapshot": BASE_SNAP, "size": img.size(), "created": False}
                if BASE_SNAP not in snaps:
                    img.create_snap(BASE_SNAP)
                img.protect_snap(BASE_SNAP)
                return {"name": base, "snapshot": BASE_SNAP, "size": img.size(), "created": False}
        fill(self, base)
        with self.image(base) as img:
            img.create_snap(BASE_SNAP)
            img.protect_snap(BASE_SNAP)
            return {"name": base, "snapshot": BASE_SNAP, "size": img.size(), "created": True}

    def depth(self, name: str) -> int:
        """How many parents the image has (0: a flat image)."""
        n, current = 0, name
        with self.ioctx() as io:
            rbd = self._rbd()
            while True:
                img = rbd.Image(io, current, read_only=True)
                try:
                    try:
                        parent = img.get_parent_image_spec()
                    except rbd.ImageNotFound:
                        return n
                finally:
                    img.close()
                if parent["pool_name"] != self.pool:
                    return n + 1   # a parent in another pool ends what we can walk with this ioctx
                n, current = n + 1, parent["image_name"]

    def clone(self, parent: str, snapshot: str, name: str, size: int | None = None, max_depth: int = 0) -> dict:
        """A copy-on-write clone of parent@snapshot (protected); flattened when the chain gets deeper than
        max_depth (0: never)."""
        check_name(parent), check_name(name)
        rbd = self._rbd()
        with self.image(parent) as img:     # format 1 clones need a protected parent snapshot
            if snapshot not in {s["name"] for s in img.list_snaps()}:
                if snapshot != BASE_SNAP:
                    raise NotFound(f"RBD image {parent} has no snapshot {snapshot}")
                img.create_snap(BASE_SNAP)  # a base copied in by volume_copy gets its snapshot now
            if not img.is_protected_snap(snapshot):
                img.protect_snap(snapshot)
        with self.ioctx() as io:
            if name not in rbd.RBD().list(io):
                rbd.RBD().clone(io, parent, snapshot, io, name, features=rbd.RBD_FEATURE_LAYERING)
        flattened = False
        if max_depth and self.depth(name) > max_depth:
            self.flatten(name)
            flattened = True
        with self.image(name) as img:
            if size and size > img.size():
                img.resize(size)
            return {"path": name, "size": img.size(), "physical_size": 0, "flattened": flattened}

    def flatten(self, name: str) -> dict:
        with self.image(name) as img:
            img.flatten()
        return {"path": name, "depth": 0}

    def parent(self, name: str) -> dict | None:
        rbd = self._rbd()
        with self.image(name, read_only=True) as img:
            try:
                p = img.get_parent_image_spec()
            except rbd.ImageNotFound:
                return None
        return {"pool": p["pool_name"], "image": p["image_name"], "snapshot": p["snap_name"]}

    def snapshots(self, name: str) -> list:
        with self.image(name, read_only=True) as img:
            return [{"name": s["name"], "size": s["size"], "protected": img.is_protected_snap(s["name"])}
                    for s in img.list_snaps()]

    def snapshot_create(self, name: str, snap: str) -> dict:
        check_name(snap)
        with self.image(name) as img:
            if snap not in {s["name"] for s in img.list_snaps()}:
                img.create_snap(snap)
            return {"name": name, "snapshot": snap, "size": img.size()}

    def snapshot_rollback(self, name: str, snap: str) -> dict:
        with self.image(name) as img:
            if snap not in {s["name"] for s in img.list_snaps()}:
                raise NotFound(f"RBD image {name} has no snapshot {snap}")
            img.rollback_to_snap(snap)
            return {"name": name, "snapshot": snap, "size": img.size()}

    def snapshot_remove(self, name: str, snap: str, flatten_children: bool = False) -> bool:
        """False when it was already gone (or the image is); Busy while clones still depend on it, unless
        flatten_children: then the clones in this pool are flattened first (each becomes a full copy)."""
        if not self.exists(name):
            return False
        with self.image(name) as img:
            if snap not in {s["name"] for s in img.list_snaps()}:
                return False
            if img.is_protected_snap(snap):
                img.set_snap(snap)
                children = list(img.list_children())
                img.set_snap(None)
                if children and flatten_children and all(c[0] == self.pool for c in children):
                    for _, child in children:
                        self.flatten(child)
                elif children:
                    raise Busy(f"snapshot {name}@{snap} has {len(children)} clone(s) "
                               f"({', '.join(c[1] for c in children[:3])}); flatten or delete them first")
                img.unprotect_snap(snap)
            img.remove_snap(snap)
            return True

    def purge_snapshots(self, name: str) -> list:
        """Remove every snapshot of a volume's image but a template base's, flattening their clones, so the
        image can be deleted (the snapshots' backups on image stores are not touched)."""
        if not self.exists(name):
            return []
        gone = [s["name"] for s in self.snapshots(name) if s["name"] != BASE_SNAP]
        for snap in gone:
            self.snapshot_remove(name, snap, flatten_children=True)
        return gone

    def export_diff(self, name: str, out, to_snap: str, from_snap: str | None = None, chunk: int = 4 << 20,
                    progress=None, window: int = 8) -> int:
        """Write the changes between from_snap (None: since creation) and to_snap to the file object out in
        `rbd export-diff` format v1 (so `rbd import-diff` applies it); returns the data bytes written. Up to
        `window` reads are in flight at once (as `rbd export` does), written in order."""
        progress = progress or (lambda p: None)
        with self.image(name, snapshot=to_snap, read_only=True) as img:
            size = img.size()
            out.write(b"rbd diff v1\n")
            if from_snap:
                out.write(b"f" + struct.pack("<I", len(from_snap)) + from_snap.encode())
            out.write(b"t" + struct.pack("<I", len(to_snap)) + to_snap.encode())
            out.write(b"s" + struct.pack("<Q", size))
            extents = []
            img.diff_iterate(0, size, from_snap, lambda off, length, exists: extents.append((off, length, exists)))
            records = []          # ("z", offset, length) or ("w", offset, length) of at most chunk bytes
            for off, length, exists in extents:
                if not exists:
                    records.append(("z", off, length))
                    continue
                records += [("w", pos, min(chunk, off + length - pos)) for pos in range(off, off + length, chunk)]
            reads = [r for r in records if r[0] == "w"]
            total = sum(n for _, _, n in reads) or 1
            done, cond, issued, written, completed = {}, threading.Condition(), 0, 0, [0]

            def issue(i):
                def finished(completion, data, i=i):
                    with cond:
                        done[i] = data if completion.get_return_value() >= 0 else completion.get_return_value()
                        completed[0] += 1
                        cond.notify()
                img.aio_read(reads[i][1], reads[i][2], finished)
            k = 0
            try:
                for kind, off, length in records:
                    if kind == "z":
                        out.write(b"z" + struct.pack("<QQ", off, length))
                        continue
                    while issued < len(reads) and issued < k + window:
                        issue(issued)
                        issued += 1
                    with cond:
                        while k not in done:
                            cond.wait()
                        data = done.pop(k)
                    if not isinstance(data, bytes) or len(data) != length:
                        raise Failed(f"reading {name}@{to_snap} at {off} failed"
                                     + (f" (error {data})" if isinstance(data, int) else ""))
                    out.write(b"w" + struct.pack("<QQ", off, length))
                    out.write(data)
                    k, written = k + 1, written + length
                    progress(written * 100 // total)
                out.write(b"e")
            finally:
                with cond:                  # no callback may outlive the image it reads from
                    while completed[0] < issued:
                        cond.wait()
        return written


# ---- heartbeat: each agent with an RBD pool updates one omap key of a RADOS object in the pool

class Heartbeats:
    """`volstack.heartbeat` in each RBD pool holds one omap key per host name, whose value is
    {"time": unix seconds, "interval": s}. Reading the object tells which hosts still beat (HA later)."""

    def __init__(self):
        self.pools: dict[str, RbdPool] = {}
        self.lock = threading.Lock()
        self.thread = None
        self.stopped = threading.Event()

    def add(self, pool: RbdPool) -> None:
        with self.lock:
            self.pools[pool.uuid] = pool
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="rbd-heartbeat", daemon=True)
                self.thread.start()

    def drop(self, uuid: str) -> None:
        with self.lock:
            self.pools.pop(uuid, None)

    def beat(self, pool: RbdPool) -> None:
        rados, _ = bindings()
        value = json.dumps({"time": time.time(), "interval": pool.heartbeat_seconds}).encode()
        with pool.ioctx() as io, rados.WriteOpCtx() as op:
            io.set_omap(op, (pool.hostname,), (value,))
            io.operate_write_op(op, HEARTBEAT_OBJECT)

    def _run(self) -> None:
        due: dict[str, float] = {}
        while not self.stopped.wait(0.2):
            with self.lock:
                pools = list(self.pools.values())
            now = time.monotonic()
            for pool in pools:
                if due.get(pool.uuid, 0) > now:
                    continue
                due[pool.uuid] = now + pool.heartbeat_seconds
                try:
                    self.beat(pool)
                except Exception as e:   # the key is never in these texts
                    log.warning("heartbeat to RBD pool %s failed: %s", pool.uuid, getattr(e, "text", e))


heartbeats = Heartbeats()


def read_heartbeats(pool: RbdPool) -> dict:
    """{host name: {"time", "interval"}} from the pool's heartbeat object ({} before any beat)."""
    rados, _ = bindings()
    out = {}
    with pool.ioctx() as io, rados.ReadOpCtx() as op:
        it, _ = io.get_omap_vals(op, "", "", 10000)
        try:
            io.operate_read_op(op, HEARTBEAT_OBJECT)
        except rados.ObjectNotFound:
            return {}
        for host, value in it:
            try:
                out[host] = json.loads(value)
            except ValueError:
                continue
    return out
