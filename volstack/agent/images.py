"""Pool adapters and the qemu-img operations on volume images.

A pool is described by the management server in every command: {"uuid", "type", "path", "host",
"export"}. Volume images live directly in the pool root under the name the management server gives
(usually the volume uuid, no extension). There is one adapter per kind of pool, each with the same
small interface; the image operations below work on any adapter through qemu-img, always with the
explicit `-f` the management server recorded: an image's format is never probed from its bytes (a guest
writes a raw volume's bytes, and a qcow2 header it wrote there would make qemu-img follow a backing file
of its choosing). Backing files are followed only where volstack set them (`chain`).

- `DirectoryPool` (Filesystem, SharedMountPoint): a local directory. The agent never creates or
  mounts it: a missing directory is reported, not repaired.
- `NfsPool` (NetworkFilesystem): `nfs://host/export/name` through QEMU's userspace NFS driver, plus
  `nfs3.NfsClient` for capacity, listing, delete and rename. Nothing is ever mounted.
- `rbd.RbdPool` (RBD): images in a Ceph pool through librbd; its key reaches qemu-img and QEMU as
  secret objects (`qemu_img_objects`, `qmp_objects`), never on a command line.
"""
import ctypes
import importlib
import json
import os
import re
import stat
import subprocess
from contextlib import ExitStack, contextmanager
from urllib.parse import quote

from volstack.agent import luks, nfs3, programs, tasks
from volstack.agent.errors import Busy, Failed, InvalidArgument, NotFound, Unavailable

FORMATS = ("qcow2", "raw")
MAX_SIZE = 1 << 50   # 1 PiB: anything larger is a mistake, not a volume
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")


def check_name(name) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(f"invalid image name {name!r}: use letters, digits and . _ + - "
                              "(one path component, not starting with a dot)")
    return name


def check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size > MAX_SIZE:
        raise InvalidArgument(f"invalid size {size!r}: give a positive number of bytes up to {MAX_SIZE}")
    return size


def check_format(fmt) -> str:
    if fmt not in FORMATS:
        raise InvalidArgument(f"invalid format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def _split(path) -> list[str]:
    """Components of a path relative to a pool root; anything that could leave the root is refused."""
    if path in (None, "", "/", "."):
        return []
    if not isinstance(path, str) or path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"path {path!r} must be relative to the pool root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"path {path!r} leaves the pool")
    return parts


class Pool:
    """The interface of a pool adapter."""
    uuid: str

    def connect(self) -> dict: ...          # checks the pool is usable here; returns stats()
    def stats(self) -> dict: ...            # {"capacity", "used", "available"} in bytes
    def list(self, path: str) -> list: ...  # [{"name", "isdirectory", "size", "lastupdated"}]
    def exists(self, name: str) -> bool: ...
    def remove(self, name: str) -> bool: ...   # False when it was already gone
    def rename(self, src: str, dst: str) -> None: ...
    def target(self, name: str) -> str: ...     # what qemu-img is given
    def blockdev(self, name: str) -> dict: ...  # QMP protocol-node options for QEMU
    preallocation: dict                     # provisioning -> {format: qemu-img preallocation or None}
    formats = FORMATS                       # image formats the pool can hold
    make_image = None                       # (name, size, fmt): the pool creates images itself (not qemu-img)
    holds_chains = False                    # qcow2 chains by bare backing names open through target()

    def qmp_objects(self) -> list:          # QMP object-add arguments QEMU needs before blockdev()
        return []

    @contextmanager
    def qemu_img_objects(self):             # extra qemu-img arguments (--object ...) during one call
        yield []

    def prepare_target(self, name: str, size: int, fmt: str) -> list:
        return []                           # a copy's target made beforehand: extra convert args (-n)


class DirectoryPool(Pool):
    holds_chains = True       # (QEMU 7.2's nfs driver resolves a bare backing name against the image's own URL)
    preallocation = {"thin": {"qcow2": "off", "raw": "off"},
                     "sparse": {"qcow2": "metadata", "raw": "off"},
                     "fat": {"qcow2": "falloc", "raw": "full"}}

    def __init__(self, spec: dict, hostname: str):
        self.uuid, self.hostname = spec.get("uuid"), hostname
        path = spec.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidArgument(f"pool {self.uuid}: path {path!r} must be an absolute directory path")
        self.root = os.path.normpath(path)

    def _check(self) -> None:
        if not os.path.isdir(self.root):
            raise Unavailable(f"path {self.root} does not exist on host {self.hostname}")

    def connect(self) -> dict:
        self._check()
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise Unavailable(f"path {self.root} on host {self.hostname} is not writable by the agent")
        return self.stats()

    def stats(self) -> dict:
        self._check()
        st = os.statvfs(self.root)
        capacity = st.f_blocks * st.f_frsize
        return {"capacity": capacity, "used": capacity - st.f_bfree * st.f_frsize,
                "available": st.f_bavail * st.f_frsize}

    def _inside(self, parts: list[str]) -> str:
        root = os.path.realpath(self.root)
        real = os.path.realpath(os.path.join(root, *parts))
        if real != root and not real.startswith(root + os.sep):
            raise InvalidArgument(f"path {'/'.join(parts)!r} leaves the pool")
        return real

    def list(self, path: str) -> list:
        self._check()
        where = self._inside(_split(path))
        if not os.path.isdir(where):
            raise NotFound(f"no directory {path!r} in pool {self.uuid}")
        out = []
        for e in sorted(os.scandir(where), key=lambda e: e.name):
            st = e.stat(follow_symlinks=False)
            link = e.is_symlink()
            out.append({"name": e.name, "isdirectory": e.is_dir(follow_symlinks=False), "size": st.st_size,
                        "lastupdated": int(st.st_mtime),
                        "_probe": e.path if e.is_file(follow_symlinks=False) and not link else None})
        return out

    def head(self, path: str, count: int = 1024) -> bytes:
        """The first bytes of a regular file the listing found (never through a link, never blocking)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            return os.read(fd, count) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        finally:
            os.close(fd)

    def exists(self, name: str) -> bool:
        self._check()
        return os.path.lexists(self.target(name))

    def remove(self, name: str) -> bool:
        self._check()
        try:
            os.unlink(self.target(name))
            return True
        except FileNotFoundError:
            return False

    def rename(self, src: str, dst: str) -> None:
        os.rename(self.target(src), self.target(dst))

    def target(self, name: str) -> str:
        return os.path.join(self.root, name)

    def blockdev(self, name: str) -> dict:
        return {"driver": "file", "filename": self.target(name)}


class NfsPool(Pool):
    # QEMU's nfs driver has no preallocation: "fat" writes zeros over the whole image afterwards
    preallocation = {"thin": {"qcow2": "off", "raw": None},
                     "sparse": {"qcow2": "metadata", "raw": None},
                     "fat": {"qcow2": "metadata", "raw": None}}
    write_zeros_for_fat = True

    def __init__(self, spec: dict, hostname: str):
        self.uuid, self.hostname = spec.get("uuid"), hostname
        self.host, export = spec.get("host"), spec.get("export") or spec.get("path")
        if not isinstance(self.host, str) or not re.match(r"^[A-Za-z0-9.:\[\]-]+$", self.host or ""):
            raise InvalidArgument(f"pool {self.uuid}: invalid NFS server {self.host!r}")
        if not isinstance(export, str) or not export.startswith("/") or ".." in export.split("/"):
            raise InvalidArgument(f"pool {self.uuid}: NFS export {export!r} must be an absolute path")
        self.export = "/" + "/".join(p for p in export.split("/") if p)

    def _client(self) -> nfs3.NfsClient:
        try:
            return nfs3.NfsClient(self.host, self.export)
        except nfs3.NfsError as e:
            raise Unavailable(f"NFS export {self.host}:{self.export} is not reachable from host "
                              f"{self.hostname}: {e}") from None

    def _call(self, fn):
        with self._client() as c:
            return self._errors(lambda: fn(c))

    def _errors(self, fn):
        """fn() with NFS errors turned into the agent's error kinds."""
        try:
            return fn()
        except nfs3.NfsUnreachable as e:
            raise Unavailable(f"NFS server {self.host}: {e}") from None
        except nfs3.NfsError as e:
            if e.status == 2:
                raise NotFound(f"pool {self.uuid}: {e}") from None
            if e.status in (20, 22):
                raise InvalidArgument(f"pool {self.uuid}: {e}") from None
            raise Failed(f"NFS {self.host}:{self.export}: {e}") from None

    def connect(self) -> dict:
        return self.stats()

    def stats(self) -> dict:
        return self._call(lambda c: c.fsstat())

    def list(self, path: str) -> list:
        parts = _split(path)
        out = []
        for a in sorted(self._call(lambda c: c.listdir(parts)), key=lambda a: a["name"]):
            rel = "/".join(parts + [a["name"]])
            out.append({"name": a["name"], "isdirectory": a["type"] == nfs3.NF3DIR, "size": a["size"],
                        "lastupdated": a["mtime"], "_probe": rel if a["type"] == nfs3.NF3REG else None})
        return out

    def head(self, rel: str, count: int = 1024) -> bytes:
        def first(c):
            fh, _ = c.lookup(_split(rel))       # refuses symbolic links on the way
            return c.read(fh, 0, count)[0]
        return self._call(first)

    def exists(self, name: str) -> bool:
        return self._call(lambda c: c.stat([name])) is not None

    def remove(self, name: str) -> bool:
        return self._call(lambda c: c.remove([name]))

    def rename(self, src: str, dst: str) -> None:
        self._call(lambda c: c.rename([src], [dst]))

    @contextmanager
    def reader(self, name: str):
        """(size, mtime, read(offset, count) -> bytes) of one file, over one NFS connection."""
        with self._client() as c:
            fh, attrs = self._errors(lambda: c.lookup([name]))
            yield attrs["size"], attrs["mtime"], lambda offset, count: self._errors(lambda: c.read(fh, offset, count)[0])

    def _url(self, rel: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nfs://{host}{quote(self.export)}/{quote(rel)}"

    def target(self, name: str) -> str:
        return self._url(name)

    def blockdev(self, name: str) -> dict:
        return {"driver": "nfs", "server": {"type": "inet", "host": self.host}, "path": f"{self.export}/{name}"}


POOL_TYPES = {"Filesystem": DirectoryPool, "SharedMountPoint": DirectoryPool, "NetworkFilesystem": NfsPool,
              "RBD": "volstack.agent.rbd:RbdPool"}


def open_pool(spec, hostname: str) -> Pool:
    if not isinstance(spec, dict):
        raise InvalidArgument("pool must be an object with uuid, type and path (or host and export)")
    if spec.get("type") == "NetworkFilesystem" and spec.get("mount") == "kernel":
        from volstack.agent.nfsmount import KernelNfsPool
        return KernelNfsPool(spec, hostname)
    cls = POOL_TYPES.get(spec.get("type"))
    if isinstance(cls, str):       # adapters importing this module are loaded on first use
        module, _, name = cls.partition(":")
        cls = getattr(importlib.import_module(module), name)
    if cls is None:
        raise InvalidArgument(f"unsupported pool type {spec.get('type')!r}: use one of {', '.join(POOL_TYPES)}")
    return cls(spec, hostname)


# ---- qemu-img

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_agent() -> None:
    _libc.prctl(1, 9)   # PR_SET_PDEATHSIG, SIGKILL: no orphaned copy keeps writing after the agent died


def _error(stderr: str, what: str) -> Exception:
    text = " ".join(line.removeprefix("qemu-img: ") for line in stderr.strip().splitlines()[-3:])
    crypt = luks.explain(text, what)
    if crypt is not None:
        return crypt
    if 'lock' in text and ('Failed to get' in text or 'Is another process using' in text):
        return Busy(f"{what}: the image is in use by a running guest ({text})")
    if "No such file" in text or "NFS3ERR_NOENT" in text:
        return NotFound(f"{what}: {text}")
    if "Failed to mount nfs share" in text or "nfs_service failed" in text or "error connecting" in text:
        return Unavailable(f"{what}: {text}")
    return Failed(f"{what}: {text}")


def qemu_img(args: list[str], what: str, timeout: float = 300, pools=(), pass_fds=()) -> str:
    try:
        with ExitStack() as stack:
            extra = [a for p in pools for a in stack.enter_context(p.qemu_img_objects())]
            r = subprocess.run([programs.QEMU_IMG, args[0], *extra, *args[1:]], capture_output=True, text=True,
                               timeout=timeout, preexec_fn=_die_with_agent, pass_fds=pass_fds)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{what}: qemu-img did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise Failed(programs.not_installed(programs.QEMU_IMG)) from None
    if r.returncode:
        raise _error(r.stderr, what)
    return r.stdout


class Key:
    """An encrypted image's passphrase as a qemu-img secret object; passed with the pools to qemu_img()."""

    def __init__(self, enc: dict, name: str):
        self.enc, self.id, self.uuid = enc, luks.secret_id(name), "key:" + name

    def qemu_img_objects(self):
        return luks.secret_file(self.enc, self.id)


def _pbkdf_retry(fn):
    """QEMU 7.2 benchmarks PBKDF2 when it writes a LUKS key slot and fails when the thread's CPU clock did not
    advance ("Unable to get accurate CPU usage", a coarse clock on a busy host): a retry measures again."""
    for attempt in range(4):
        try:
            return fn()
        except Failed as e:
            if "accurate CPU usage" not in e.text or attempt == 3:
                raise


def list_entries(pool: Pool, path: str) -> list:
    """A pool's files with the format their first bytes suggest: a hint for listings only (nothing is opened by
    it), read by the agent itself, so qemu-img never opens whatever a guest-written header names."""
    from volstack.agent.unpack import sniff_bytes
    out = []
    for e in pool.list(path):
        src = e.pop("_probe")
        try:
            e["format"] = sniff_bytes(pool.head(src)) if src else e.get("format")
        except Exception:
            e["format"] = None
        out.append(e)
    return out


MAX_CHAIN = 16      # deeper backing chains than volstack ever makes (a clone of a template, a delta backup chain)


def _checked(pool: Pool, name: str, data: dict) -> tuple[str, str] | None:
    """(name, format) of the backing file of an image qemu-img described, None without one. volstack only ever
    sets a bare name of an image beside it with its format recorded (-F); anything else it did not set."""
    spec = (data.get("format-specific") or {}).get("data") or {}
    if spec.get("data-file"):
        raise Failed(f"volume {name} in pool {pool.uuid} names an external data file ({spec['data-file']!r}), "
                     "which volstack never sets; refusing to open it")
    backing = data.get("backing-filename")
    if not backing:
        return None
    fmt = data.get("backing-filename-format")
    if not _NAME.match(backing) or fmt not in FORMATS:
        raise Failed(f"volume {name} in pool {pool.uuid} names backing file {backing!r}"
                     + (f" ({fmt})" if fmt else " without a format") + ", which volstack did not set; refusing to "
                     "open it")
    return backing, fmt


def info(pool: Pool, name: str, fmt: str, enc: dict | None = None) -> dict:
    """Sizes of an image opened as fmt (the format volstack recorded; never probed). Its backing file, if any,
    must be one volstack set (a bare name beside it, format recorded) and it has no external data file.
    enc: the image is encrypted (its passphrase); the size is then what the guest sees."""
    check_format(fmt)
    if not pool.exists(name):
        raise NotFound(f"volume {name} does not exist in pool {pool.uuid}")
    if enc:
        key = Key(enc, name)
        data = json.loads(qemu_img(["info", "-U", "--output=json", "-f", luks.qemu_format(fmt),
                                    luks.target(pool, name, fmt, key.id)], f"volume {name}", timeout=60,
                                   pools=(pool, key)))
    else:
        data = json.loads(qemu_img(["info", "-U", "--output=json", "-f", fmt, pool.target(name)], f"volume {name}",
                                   timeout=60, pools=(pool,)))
    backing = _checked(pool, name, data)
    return {"size": data["virtual-size"], "physical_size": data.get("actual-size", 0), "format": fmt,
            "backing": data.get("full-backing-filename") or data.get("backing-filename"),
            "backing_format": backing and backing[1], "encrypted": bool(data.get("encrypted")) or bool(enc)}


def chain(pool: Pool, name: str, fmt: str) -> list[tuple[str, str]]:
    """[(name, format)] from the image down its backing chain, each link checked as info() does: what QEMU
    and qemu-img may open for this image, and nothing else."""
    out = [(check_name(name), check_format(fmt))]
    while True:
        have = info(pool, *out[-1])
        if not have["backing_format"]:
            return out
        nxt = (os.path.basename(have["backing"]), have["backing_format"])
        if len(out) >= MAX_CHAIN or nxt in out:
            raise Failed(f"volume {name} in pool {pool.uuid} has a backing chain volstack did not make")
        out.append(nxt)


def blockdev_node(pool: Pool, name: str, fmt: str) -> dict:
    """QMP blockdev-add options of an image with its whole backing chain spelled out (every qcow2 level's
    `backing` fixed, the last one null), so QEMU opens exactly the images chain() allows."""
    node = None
    for link, link_fmt in reversed(chain(pool, name, fmt)):
        node = {"driver": link_fmt, "file": pool.blockdev(link),
                **({"backing": node} if link_fmt == "qcow2" else {})}
    return node


def create(pool: Pool, name: str, size: int, fmt: str, provisioning: str = "thin", encryption=None) -> dict:
    check_name(name), check_size(size), check_format(fmt)
    enc = luks.check(encryption)
    provisioning = provisioning.lower() if isinstance(provisioning, str) else provisioning
    if fmt not in pool.formats:
        raise InvalidArgument(f"pool {pool.uuid} holds {', '.join(pool.formats)} images, not {fmt}")
    if provisioning not in pool.preallocation:
        raise InvalidArgument(f"invalid provisioning {provisioning!r}: use thin, sparse or fat")
    if pool.exists(name):
        try:
            have = info(pool, name, fmt, enc)
        except Failed as e:
            raise InvalidArgument(f"volume {name} already exists in pool {pool.uuid} and is not a {fmt} image "
                                  f"({e.text})") from None
        if have["size"] != size:
            raise InvalidArgument(f"volume {name} already exists in pool {pool.uuid} as {have['format']} of "
                                  f"{have['size']} bytes (asked: {fmt} of {size} bytes)")
        return {"path": name, "size": have["size"], "physical_size": have["physical_size"]}
    prealloc = pool.preallocation[provisioning][fmt]
    if provisioning == "fat" and size > pool.stats()["available"]:
        raise Failed(f"pool {pool.uuid} has not enough free space for a fat volume of {size} bytes")
    args = ["create", "-q", "-f", fmt] + (["-o", f"preallocation={prealloc}"] if prealloc else [])
    key = Key(enc, name) if enc else None
    try:
        if enc:
            make_encrypted(pool, name, size, fmt, key, prealloc)
        elif pool.make_image is not None:
            pool.make_image(name, size, fmt)
        else:
            qemu_img(args + [pool.target(name), str(size)], f"create volume {name}")
        if provisioning == "fat" and getattr(pool, "write_zeros_for_fat", False):
            out = ["-O", luks.qemu_format(fmt), luks.target(pool, name, fmt, key.id)] if key else \
                ["-O", fmt, pool.target(name)]
            qemu_img(["convert", "-n", "-S", "0", "--image-opts", f"driver=null-co,size={size},read-zeroes=on",
                      *out], f"allocate volume {name}", timeout=None, pools=(pool, key) if key else ())
    except Exception:
        pool.remove(name)   # qemu-img leaves a partial file behind on failure
        raise
    have = info(pool, name, fmt, enc)
    return {"path": name, "size": have["size"], "physical_size": have["physical_size"]}


def make_encrypted(pool: Pool, name: str, size: int, fmt: str, key: Key, prealloc: str | None = None) -> None:
    """A new encrypted image of `size` guest-visible bytes. qcow2: LUKS inside qcow2. raw on a pool that makes
    its images itself (RBD): the LUKS header is written in a private scratch file (tmpfs), the image is made
    header + payload long and the header copied in; unwritten payload reads as noise, as on any new LUKS disk."""
    if fmt == "qcow2":
        opts = luks.create_options(key.id) + (f",preallocation={prealloc}" if prealloc else "")
        _pbkdf_retry(lambda: qemu_img(["create", "-q", "-f", "qcow2", "-o", opts, pool.target(name), str(size)],
                                      f"create encrypted volume {name}", pools=(pool, key)))
        return
    if pool.make_image is None:
        _pbkdf_retry(lambda: qemu_img(["create", "-q", "-f", "luks", "-o",
                                       f"key-secret={key.id},iter-time={luks.ITER_TIME_MS}", pool.target(name),
                                       str(size)], f"create encrypted volume {name}", pools=(pool, key)))
        return
    with luks.scratch_dir() as d:
        header = os.path.join(d, "header")
        _pbkdf_retry(lambda: qemu_img(["create", "-q", "-f", "luks", "-o",
                                       f"key-secret={key.id},iter-time={luks.ITER_TIME_MS}", header, str(size)],
                                      f"format the LUKS header of {name}", pools=(key,)))
        pool.make_image(name, os.path.getsize(header), "raw")
        qemu_img(["convert", "-n", "--target-is-zero", "-f", "raw", header, "-O", "raw", pool.target(name)],
                 f"write the LUKS header of {name}", pools=(pool,))


def delete(pool: Pool, name: str) -> dict:
    check_name(name)
    pool.remove(name)
    return {}


def resize(pool: Pool, name: str, size: int, fmt: str, shrink_ok: bool = False, encryption=None) -> dict:
    """encryption: the image is LUKS-encrypted; its payload grows with the image."""
    check_name(name), check_size(size)
    enc = luks.check(encryption)
    have = info(pool, name, fmt, enc)
    if size == have["size"]:
        return {"size": size}
    if size < have["size"] and not shrink_ok:
        raise InvalidArgument(f"volume {name} is {have['size']} bytes; shrinking it to {size} bytes loses data "
                              "and needs shrink_ok")
    args = ["resize", "-q"] + (["--shrink"] if size < have["size"] else [])
    if enc:
        key = Key(enc, name)
        qemu_img(args + ["-f", luks.qemu_format(fmt), luks.target(pool, name, fmt, key.id), str(size)],
                 f"resize volume {name}", pools=(pool, key))
    else:
        qemu_img(args + ["-f", fmt, pool.target(name), str(size)], f"resize volume {name}", pools=(pool,))
    return {"size": info(pool, name, fmt, enc)["size"]}


def part_name(name: str) -> str:
    """Where a copy is written before it is renamed into place (so a finished name is a finished copy)."""
    return f".{name}.part"


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def copy(src: Pool, src_name: str, dst: Pool, dst_name: str, fmt: str, progress=None,
         src_format: str | None = None, snapshot: str | None = None, speed: int = 0,
         src_encryption=None, encryption=None) -> dict:
    """qemu-img convert src -> dst, progress(percent) as it goes; a failed (or cancelled) copy leaves no
    destination. src_format: what volstack recorded for src (required: never probed). snapshot: copy that
    internal (qcow2) snapshot of src instead of its current data. speed: bytes/s at most (0: unlimited), so a
    copy can spare a pool that guests use. src_encryption: src is encrypted; encryption: the copy is written
    encrypted with that passphrase. An encrypted image is never copied in clear."""
    check_name(src_name), check_name(dst_name), check_format(fmt)
    src_enc, dst_enc = luks.check(src_encryption), luks.check(encryption)
    if src_enc and not dst_enc:
        raise InvalidArgument(f"volume {src_name} is encrypted: its copy must be encrypted too (give encryption)")
    if src_format is None:
        raise InvalidArgument("src_format is required: the source's recorded format (an image is never probed)")
    check_format(src_format)
    if fmt not in dst.formats:
        fmt = dst.formats[0]       # e.g. a qcow2 template lands raw on RBD; the result says which format
    if dst.exists(dst_name):
        raise InvalidArgument(f"volume {dst_name} already exists in pool {dst.uuid}")
    have = info(src, src_name, src_format, src_enc)
    if src_format == "qcow2" and have["backing_format"]:
        chain(src, src_name, src_format)        # qemu-img convert reads the whole chain: every link checked
    part = part_name(dst_name)
    src_key = Key(src_enc, "src-" + src_name) if src_enc else None
    dst_key = Key(dst_enc, part) if dst_enc else None
    dst.remove(part)
    proc = None
    try:
        if dst_key:             # made (and its key slot written) first; the copy then only fills it
            make_encrypted(dst, part, have["size"], fmt, dst_key)
            extra = ["-n"]
        else:
            extra = dst.prepare_target(part, have["size"], fmt)
        with ExitStack() as stack:      # secret files live as long as qemu-img runs
            objects = [a for p in {p.uuid: p for p in (src, dst, src_key, dst_key) if p}.values()
                       for a in stack.enter_context(p.qemu_img_objects())]
            source = ["-f", luks.qemu_format(src_format), luks.target(src, src_name, src_format, src_key.id)] \
                if src_key else ["-f", src_format, src.target(src_name)]
            out = ["-O", luks.qemu_format(fmt), luks.target(dst, part, fmt, dst_key.id)] if dst_key \
                else ["-O", fmt, dst.target(part)]
            cmd = [programs.QEMU_IMG, "convert", "-p", *objects, *extra, *(["-r", str(speed)] if speed else []),
                   *(["-l", f"snapshot.name={snapshot}"] if snapshot else []), *source[:2], *out[:2], source[2],
                   out[2]]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_die_with_agent)
            tasks.watch(proc)           # task_cancel kills it; the except below removes the partial copy
            buf, last = b"", -1
            while chunk := proc.stdout.read1(4096):
                buf += chunk
                found = _PERCENT.findall(buf)
                buf = buf[-64:]
                if found and progress and int(float(found[-1])) != last:
                    last = int(float(found[-1]))
                    progress(last)
            err = proc.stderr.read().decode(errors="replace")
            if proc.wait():
                raise _error(err, f"copy {src_name} to pool {dst.uuid}")
        dst.rename(part, dst_name)
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        try:
            dst.remove(part)
        except Exception:
            pass
        raise
    have = info(dst, dst_name, fmt, dst_enc)
    return {"path": dst_name, "size": have["size"], "physical_size": have["physical_size"], "format": fmt}


def clone(pool: Pool, base: str, name: str, size: int | None = None, base_format: str = "qcow2") -> dict:
    """A qcow2 linked clone of base (a template's cached copy in the same pool), grown to size if given.
    The backing file is recorded by its bare name so the pair works wherever the pool is reached from."""
    check_name(base), check_name(name), check_format(base_format)
    if not pool.exists(base):
        raise NotFound(f"base image {base} does not exist in pool {pool.uuid}")
    base_size = info(pool, base, base_format)["size"]
    size = max(check_size(size), base_size) if size else base_size
    if pool.exists(name):
        have = info(pool, name, "qcow2")
        if have["backing"] is None or os.path.basename(have["backing"]) != base:
            raise InvalidArgument(f"volume {name} already exists in pool {pool.uuid} and is not a clone of {base}")
        return {"path": name, "size": have["size"], "physical_size": have["physical_size"]}
    try:
        qemu_img(["create", "-q", "-f", "qcow2", "-b", base, "-F", base_format, pool.target(name), str(size)],
                 f"clone {base} as {name}")
    except Exception:
        pool.remove(name)
        raise
    have = info(pool, name, "qcow2")
    return {"path": name, "size": have["size"], "physical_size": have["physical_size"]}
