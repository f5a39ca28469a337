"""A minimal NFSv3 client (ONC RPC over TCP, RFC 1831/1813) for the pool chores qemu-img cannot do.

These hosts have no kernel NFS client and the agent never mounts anything: image I/O goes through
QEMU's userspace `nfs://` driver, and this module does the rest: capacity (FSSTAT), listing
(READDIRPLUS), stat (LOOKUP), delete (REMOVE), rename (RENAME) and reading a file (READ: extract
downloads serve store objects byte for byte). Every socket has a timeout, so an
unreachable server fails in seconds instead of hanging.
"""
import os
import random
import socket
import struct

PMAP_PROG, PMAP_VERS = 100000, 2
MOUNT_PROG, MOUNT_VERS = 100005, 3
NFS_PROG, NFS_VERS = 100003, 3

NF3REG, NF3DIR, NF3LNK = 1, 2, 5
ERRORS = {1: "not owner", 2: "no such file or directory", 5: "I/O error", 13: "permission denied",
          17: "file exists", 20: "not a directory", 21: "is a directory", 22: "invalid argument",
          28: "no space left on the server", 63: "name too long", 66: "directory not empty", 70: "stale file handle"}


class NfsError(Exception):
    def __init__(self, text: str, status: int = 0):
        super().__init__(text)
        self.status = status


class NfsUnreachable(NfsError):
    pass


class _Packer:
    def __init__(self):
        self.parts: list[bytes] = []

    def uint(self, v: int) -> "_Packer":
        self.parts.append(struct.pack(">I", v))
        return self

    def hyper(self, v: int) -> "_Packer":
        self.parts.append(struct.pack(">Q", v))
        return self

    def opaque(self, b: bytes) -> "_Packer":
        self.uint(len(b))
        self.parts.append(b + b"\0" * (-len(b) % 4))
        return self

    def fixed(self, b: bytes) -> "_Packer":
        self.parts.append(b)
        return self

    def data(self) -> bytes:
        return b"".join(self.parts)


class _Unpacker:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def uint(self) -> int:
        v, = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return v

    def hyper(self) -> int:
        v, = struct.unpack_from(">Q", self.data, self.pos)
        self.pos += 8
        return v

    def fixed(self, n: int) -> bytes:
        b = self.data[self.pos:self.pos + n]
        if len(b) != n:
            raise NfsError("truncated NFS reply")
        self.pos += n + (-n % 4)
        return b

    def opaque(self) -> bytes:
        return self.fixed(self.uint())

    def fattr(self) -> dict:
        ftype, mode, _nlink, _uid, _gid = (self.uint() for _ in range(5))
        size, used = self.hyper(), self.hyper()
        self.pos += 8 + 8 + 8 + 8  # rdev, fsid, fileid, atime
        mtime = self.uint()
        self.pos += 4 + 8          # mtime nsec, ctime
        return {"type": ftype, "mode": mode, "size": size, "used": used, "mtime": mtime}

    def post_op_attr(self) -> dict | None:
        return self.fattr() if self.uint() else None


class _Rpc:
    """One TCP connection to one RPC program."""

    def __init__(self, host: str, port: int, prog: int, vers: int, timeout: float):
        self.prog, self.vers = prog, vers
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise NfsUnreachable(f"cannot reach {host}:{port}: {e.strerror or e}") from None
        self.sock.settimeout(timeout)
        self.cred = (_Packer().uint(0).opaque(socket.gethostname().encode()[:255])
                     .uint(os.getuid()).uint(os.getgid()).uint(0).data())

    def close(self) -> None:
        self.sock.close()

    def call(self, proc: int, args: bytes = b"") -> _Unpacker:
        xid = random.getrandbits(32)
        msg = (_Packer().uint(xid).uint(0).uint(2).uint(self.prog).uint(self.vers).uint(proc)
               .uint(1).opaque(self.cred).uint(0).uint(0).data() + args)
        try:
            self.sock.sendall(struct.pack(">I", 0x80000000 | len(msg)) + msg)
            while True:
                u = _Unpacker(self._record())
                if u.uint() == xid:
                    break
        except socket.timeout:
            raise NfsUnreachable("the NFS server did not answer in time") from None
        except OSError as e:
            raise NfsUnreachable(f"NFS connection failed: {e}") from None
        if u.uint() != 1:
            raise NfsError("malformed RPC reply")
        if u.uint() != 0:
            raise NfsError("the NFS server denied the RPC call (authentication)")
        u.uint()
        u.opaque()   # verifier
        accept = u.uint()
        if accept != 0:
            raise NfsError(f"RPC program {self.prog} v{self.vers} procedure {proc} not accepted ({accept})")
        return u

    def _record(self) -> bytes:
        out = b""
        while True:
            head, = struct.unpack(">I", self._exact(4))
            out += self._exact(head & 0x7FFFFFFF)
            if head & 0x80000000:
                return out

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OSError("connection closed by the server")
            buf += chunk
        return buf


def _status(u: _Unpacker, what: str) -> None:
    st = u.uint()
    if st:
        raise NfsError(f"{what}: {ERRORS.get(st, f'NFS error {st}')}", st)


class NfsClient:
    """NFSv3 client of one export. Names are single path components; paths are lists of them."""

    def __init__(self, host: str, export: str, timeout: float = 5.0):
        self.host, self.export = host, export
        pmap = _Rpc(host, 111, PMAP_PROG, PMAP_VERS, timeout)
        try:
            ports = {}
            for prog, vers in ((MOUNT_PROG, MOUNT_VERS), (NFS_PROG, NFS_VERS)):
                port = pmap.call(3, _Packer().uint(prog).uint(vers).uint(6).uint(0).data()).uint()
                if not port:
                    raise NfsUnreachable(f"{host} runs no NFSv3 {'MOUNT' if prog == MOUNT_PROG else 'NFS'} "
                                         "service (not registered with its portmapper)")
                ports[prog] = port
        finally:
            pmap.close()
        mnt = _Rpc(host, ports[MOUNT_PROG], MOUNT_PROG, MOUNT_VERS, timeout)
        try:
            u = mnt.call(1, _Packer().opaque(export.encode()).data())
            st = u.uint()
            if st:
                raise NfsUnreachable(f"the NFS server {host} refused to mount {export}: "
                                     f"{ERRORS.get(st, f'error {st}')} (is it exported?)", st)
            self.root = u.opaque()
        finally:
            mnt.close()
        self.rpc = _Rpc(host, ports[NFS_PROG], NFS_PROG, NFS_VERS, timeout)

    def close(self) -> None:
        self.rpc.close()

    def __enter__(self) -> "NfsClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fsstat(self) -> dict:
        u = self.rpc.call(18, _Packer().opaque(self.root).data())
        _status(u, "FSSTAT")
        u.post_op_attr()
        total, free, avail = u.hyper(), u.hyper(), u.hyper()
        return {"capacity": total, "used": total - free, "available": avail}

    def lookup(self, path: list[str]) -> tuple[bytes, dict]:
        """(handle, attributes) of path; refuses to follow a symbolic link anywhere on the way."""
        fh, attrs = self.root, None
        for i, name in enumerate(path):
            u = self.rpc.call(3, _Packer().opaque(fh).opaque(name.encode()).data())
            _status(u, "/".join(path[:i + 1]))
            fh = u.opaque()
            attrs = u.post_op_attr()
            if attrs and attrs["type"] == NF3LNK:
                raise NfsError(f"{'/'.join(path[:i + 1])} is a symbolic link", 22)
        if attrs is None:
            u = self.rpc.call(1, _Packer().opaque(fh).data())
            _status(u, "/".join(path) or "/")
            attrs = u.fattr()
        return fh, attrs

    def stat(self, path: list[str]) -> dict | None:
        try:
            return self.lookup(path)[1]
        except NfsError as e:
            if e.status == 2:
                return None
            raise

    def listdir(self, path: list[str]) -> list[dict]:
        fh, attrs = self.lookup(path)
        if attrs["type"] != NF3DIR:
            raise NfsError(f"{'/'.join(path)} is not a directory", 20)
        out, cookie, verf = [], 0, b"\0" * 8
        while True:
            u = self.rpc.call(17, _Packer().opaque(fh).hyper(cookie).fixed(verf).uint(8192).uint(65536).data())
            _status(u, "READDIRPLUS")
            u.post_op_attr()
            verf = u.fixed(8)
            while u.uint():
                u.hyper()
                name = u.opaque().decode(errors="replace")
                cookie = u.hyper()
                a = u.post_op_attr()
                if u.uint():
                    u.opaque()
                if name not in (".", "..") and a is not None:
                    out.append({"name": name, **a})
            if u.uint():
                return out

    def remove(self, path: list[str]) -> bool:
        """Delete a file; False if it did not exist."""
        dfh, _ = self.lookup(path[:-1])
        u = self.rpc.call(12, _Packer().opaque(dfh).opaque(path[-1].encode()).data())
        try:
            _status(u, "/".join(path))
        except NfsError as e:
            if e.status == 2:
                return False
            raise
        return True

    def read(self, fh: bytes, offset: int, count: int) -> tuple[bytes, bool]:
        """(data, eof) of up to count bytes at offset of the file with handle fh."""
        u = self.rpc.call(6, _Packer().opaque(fh).hyper(offset).uint(count).data())
        _status(u, "READ")
        u.post_op_attr()
        u.uint()
        eof = bool(u.uint())
        return u.opaque(), eof

    def rename(self, src: list[str], dst: list[str]) -> None:
        sfh, _ = self.lookup(src[:-1])
        dfh, _ = self.lookup(dst[:-1])
        u = self.rpc.call(14, _Packer().opaque(sfh).opaque(src[-1].encode()).opaque(dfh)
                          .opaque(dst[-1].encode()).data())
        _status(u, f"rename {'/'.join(src)}")
