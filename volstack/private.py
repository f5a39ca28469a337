"""Files only their owner can read: volstack's processes write secrets (the database with live sessions and its
-wal, keys, tokens, pool secrets in agent records) and guest data (disk images, consoles) that no other local user
may read. Each entry point sets a 077 umask, which every file and directory it or its children (qemu-img, QEMU)
create inherits, and tightens a data or state directory left by an older version."""
import os
import stat
from pathlib import Path


def restrict_umask() -> None:
    os.umask(0o077)


def tighten(top) -> None:
    """top and everything below it: no group or other permission bits (directories 0700, files 0600 at most).
    Symbolic links are neither followed nor changed."""
    top = Path(top)
    if not top.exists():
        return
    _strip(top)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            _strip(Path(root) / name)


def _strip(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
        return
    try:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
    except (PermissionError, FileNotFoundError):
        pass          # a file of another user (e.g. on an NFS export): not ours to change
