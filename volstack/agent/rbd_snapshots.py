"""Backups of RBD snapshots on image stores, and restores from them (the host side of services/snapshots_rbd.py).

A backup is one file `<snapshot uuid>.rbddiff` on an image store in `rbd export-diff` format v1: either the
whole image at a snapshot (a diff from nothing) or only the extents that changed since an earlier snapshot
that is still on primary. Restoring applies a chain of them in order, full one first, exactly as
`rbd import-diff` would (an operator can restore by hand with the rbd CLI). The format was chosen over a
qcow2 overlay chain because librbd hands out the changed extents directly and nothing on the host can write
them into a qcow2 overlay without a full read; the price is that a restore onto a file pool first applies
the chain to a sparse local raw file (only the data takes space) which qemu-img then converts.

Image stores reached over NFS have no writer here but qemu-img: a backup is written to the agent's work
directory and copied byte for byte (raw to raw); a restore reads the files back the same way.
"""
import contextlib
import ctypes
import os
import struct
import uuid

from volstack.agent import images
from volstack.agent.errors import Busy, Failed, InvalidArgument, NotFound

HEADER = b"rbd diff v1\n"
_PIECE = 4 << 20             # data records are read and written in pieces of at most this
_PUNCH = 0x01 | 0x02         # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
_libc = ctypes.CDLL(None, use_errno=True)


def read_records(f):
    """The records of an export-diff stream: ("s", size), ("w", offset, bytes) in pieces, ("z", offset, length),
    ("f"|"t", snapshot name). Stops at the end record; anything after it (padding) is ignored."""
    if f.read(len(HEADER)) != HEADER:
        raise InvalidArgument("not an rbd export-diff v1 stream")

    def exact(n):
        data = f.read(n)
        if len(data) != n:
            raise Failed("the backup file is truncated")
        return data
    while True:
        tag = exact(1)
        if tag == b"e":
            return
        if tag in (b"f", b"t"):
            yield tag.decode(), exact(struct.unpack("<I", exact(4))[0]).decode()
        elif tag == b"s":
            yield "s", struct.unpack("<Q", exact(8))[0]
        elif tag == b"w":
            off, length = struct.unpack("<QQ", exact(16))
            while length:
                n = min(length, _PIECE)
                yield "w", off, exact(n)
                off, length = off + n, length - n
        elif tag == b"z":
            yield ("z", *struct.unpack("<QQ", exact(16)))
        else:
            raise Failed(f"unknown record {tag!r} in the backup file")


def diff_size(path: str) -> int:
    """The image size a diff file describes (its 's' record)."""
    with open(path, "rb") as f:
        for rec in read_records(f):
            if rec[0] == "s":
                return rec[1]
    raise Failed("the backup file has no size record")


class _FileTarget:
    """A sparse local raw file the chain is applied to."""

    def __init__(self, fd):
        self.fd = fd

    def resize(self, size):
        os.ftruncate(self.fd, size)

    def write(self, off, data):
        os.pwrite(self.fd, data, off)

    def zero(self, off, length):
        if _libc.fallocate(self.fd, _PUNCH, ctypes.c_long(off), ctypes.c_long(length)) != 0:
            for pos in range(off, off + length, _PIECE):
                os.pwrite(self.fd, bytes(min(_PIECE, off + length - pos)), pos)


class _ImageTarget:
    def __init__(self, img):
        self.img = img

    def resize(self, size):
        if self.img.size() != size:
            self.img.resize(size)

    def write(self, off, data):
        self.img.write(data, off)

    def zero(self, off, length):
        self.img.write_zeroes(off, length)


def apply(paths: list, target, progress=None) -> int:
    """Apply diff files (full first) to target; returns the final size."""
    total = sum(os.path.getsize(p) for p in paths) or 1
    done, size = 0, 0
    for path in paths:
        with open(path, "rb") as f:
            for rec in read_records(f):
                if rec[0] == "s":
                    size = rec[1]
                    target.resize(size)
                elif rec[0] == "w":
                    target.write(rec[1], rec[2])
                    done += len(rec[2])
                    if progress:
                        progress(min(99, done * 100 // total))
                elif rec[0] == "z":
                    target.zero(rec[1], rec[2])
    return size


# ---- files on image stores: local paths for reading, staged writes for stores qemu-img alone can write

def _work(work_dir: str, what: str) -> str:
    os.makedirs(work_dir, mode=0o700, exist_ok=True)
    return os.path.join(work_dir, f"{what}-{uuid.uuid4().hex}")


@contextlib.contextmanager
def local_copies(files: list, work_dir: str):
    """Local paths of [(pool, name)]: a directory pool's own file, else a byte-exact copy in work_dir."""
    paths, staged = [], []
    try:
        for pool, name in files:
            images.check_name(name)
            if isinstance(pool, images.DirectoryPool):
                if not pool.exists(name):
                    raise NotFound(f"backup {name} is missing from image store {pool.uuid}")
                paths.append(pool.target(name))
                continue
            path = _work(work_dir, "in")
            staged.append(path)
            work = images.DirectoryPool({"uuid": "rbd-work", "path": os.path.dirname(path)}, "localhost")
            images.copy(pool, name, work, os.path.basename(path), "raw", src_format="raw")
            paths.append(path)
        yield paths
    finally:
        for p in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def export(pool, name: str, snapshot: str, from_snapshot: str | None, dst, dst_name: str, work_dir: str,
           progress) -> dict:
    """Back snapshot `snapshot` of RBD image `name` up to dst/dst_name: only the changes since from_snapshot when
    the image still has it, else the whole image ("full" in the result)."""
    images.check_name(dst_name)
    have = {s["name"] for s in pool.snapshots(name)}
    if snapshot not in have:
        raise NotFound(f"RBD image {name} has no snapshot {snapshot}")
    full = not from_snapshot or from_snapshot not in have
    since = None if full else from_snapshot
    local = isinstance(dst, images.DirectoryPool)
    out_path = dst.target(images.part_name(dst_name)) if local else _work(work_dir, "out")
    try:
        with open(out_path, "wb") as out:
            data = pool.export_diff(name, out, snapshot, since, progress=lambda p: progress(p * 9 // 10))
        physical = os.path.getsize(out_path)
        if local:
            dst.rename(images.part_name(dst_name), dst_name)
        else:
            dst.remove(dst_name)
            work = images.DirectoryPool({"uuid": "rbd-work", "path": os.path.dirname(out_path)}, "localhost")
            images.copy(work, os.path.basename(out_path), dst, dst_name, "raw",
                        lambda p: progress(90 + p // 10), src_format="raw")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out_path)
    with pool.image(name, snapshot=snapshot, read_only=True) as img:
        size = img.size()
    return {"path": dst_name, "data_bytes": data, "physical_size": physical, "size": size, "full": full,
            "from_snapshot": since}


def restore(hv, chain: list, dst, dst_name: str, fmt: str, replace: bool, work_dir: str, progress) -> dict:
    """Apply a chain of backups [(pool, name)], full first, to dst/dst_name: an RBD image is written in place
    (replace: its current data is zeroed first, its snapshots stay), a file pool gets a new image in `fmt`
    (replace: written beside it and renamed over it)."""
    from volstack.agent.rbd import RbdPool
    if not chain:
        raise InvalidArgument("chain must name at least one backup file")
    images.check_name(dst_name), images.check_format(fmt)
    if replace:
        user = hv.in_use(dst.uuid, dst_name)
        if user is not None:
            raise Busy(f"volume {dst_name} is attached to running VM {user}; stop the VM to revert it")
    with local_copies(chain, work_dir) as paths:
        size = diff_size(paths[0])
        if isinstance(dst, RbdPool):
            if not replace:
                part = images.part_name(dst_name)
                dst.remove(part)
                dst.make_image(part, size, "raw")
            try:
                with dst.image(dst_name if replace else part) as img:
                    if replace:
                        img.write_zeroes(0, img.size())      # a full diff lists only the data it holds
                    apply(paths, _ImageTarget(img), progress)
                if not replace:
                    dst.rename(part, dst_name)
            except BaseException:
                if not replace:
                    with contextlib.suppress(Exception):
                        dst.remove(part)
                raise
        else:
            raw = _work(work_dir, "image")
            try:
                fd = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    apply(paths, _FileTarget(fd), lambda p: progress(p // 2))
                finally:
                    os.close(fd)
                work = images.DirectoryPool({"uuid": "rbd-work", "path": os.path.dirname(raw)}, "localhost")
                staged = f"{dst_name}.revert" if replace else dst_name
                if replace:
                    dst.remove(staged)
                images.copy(work, os.path.basename(raw), dst, staged, fmt, lambda p: progress(50 + p // 2),
                            src_format="raw")
                if replace:
                    dst.rename(staged, dst_name)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(raw)
    have = images.info(dst, dst_name, "raw" if isinstance(dst, RbdPool) else fmt)
    return {"path": dst_name, "size": have["size"], "physical_size": have["physical_size"], "format": have["format"]}


def restore_image(hv, src, src_name: str, src_format: str, dst, dst_name: str, progress) -> dict:
    """Replace the data of RBD image dst_name in place by an image file (a file pool snapshot's qcow2 backup); the
    RBD image keeps its snapshots, which a rename over it would lose."""
    images.check_name(src_name), images.check_name(dst_name), images.check_format(src_format)
    user = hv.in_use(dst.uuid, dst_name)
    if user is not None:
        raise Busy(f"volume {dst_name} is attached to running VM {user}; stop the VM to revert it")
    size = images.info(src, src_name, src_format)["size"]
    with dst.image(dst_name) as img:
        if img.size() != size:
            img.resize(size)
    # -n: convert into the existing image; it is not assumed zeroed, so zero areas are written as zeros
    images.qemu_img(["convert", "-n", "-f", src_format, "-O", "raw", src.target(src_name), dst.target(dst_name)],
                    f"restore {dst_name} from {src_name}", timeout=None,
                    pools=tuple({p.uuid: p for p in (src, dst)}.values()))
    progress(100)
    return {"path": dst_name, "size": size, "physical_size": 0, "format": "raw"}
