"""What happens to downloaded bytes: the checksum (of the bytes as downloaded, as CloudStack computes it),
streamed decompression (bzip2, gzip, xz, single-member zip) into the output file, and the check that the
image is what it was registered as (format by magic bytes, then `qemu-img info -f <format>`).
"""
import bz2
import errno
import hashlib
import json
import lzma
import os
import re
import stat
import struct
import zlib
from urllib.parse import urlsplit

from volstack.agent import images
from volstack.agent.fetch import LocalError
from volstack.agent.errors import InvalidArgument, NotFound

# CloudStack's checksum algorithm names (DigestHelper) -> hashlib, and the hex length of each
ALGORITHMS = {"MD5": "md5", "SHA-1": "sha1", "SHA-224": "sha224", "SHA-256": "sha256", "SHA-384": "sha384",
              "SHA-512": "sha512"}
LABELS = {v: k for k, v in ALGORITHMS.items()}
BY_LENGTH = {hashlib.new(a).digest_size * 2: a for a in ALGORITHMS.values()}
STRONGEST = ("sha512", "sha384", "sha256", "sha224", "sha1", "md5")


def parse_checksum(text) -> tuple[str, str] | None:
    """(hashlib name, lower-case hex) from `{ALG}hex`, `{}hex` or bare hex (the length picks the algorithm);
    None for no checksum."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise InvalidArgument("checksum must be a string such as {SHA-256}<hex> or a bare hex digest")
    m = re.fullmatch(r"(?:\{([A-Za-z0-9-]*)\})?([0-9A-Fa-f]+)", text.strip())
    if not m:
        raise InvalidArgument(f"checksum {text!r} is not {{ALGORITHM}}<hex> or a hex digest")
    name, digest = (m.group(1) or "").upper(), m.group(2).lower()
    if name:
        alg = ALGORITHMS.get(name) or ALGORITHMS.get(re.sub(r"^SHA(\d)", r"SHA-\1", name))
        if alg is None:
            raise InvalidArgument(f"checksum algorithm {name!r} is not supported: use one of "
                                  f"{', '.join(ALGORITHMS)}")
        if len(digest) != hashlib.new(alg).digest_size * 2:
            raise InvalidArgument(f"a {LABELS[alg]} checksum has {hashlib.new(alg).digest_size * 2} hex digits, "
                                  f"this one has {len(digest)}")
        return alg, digest
    alg = BY_LENGTH.get(len(digest))
    if alg is None:
        raise InvalidArgument(f"a bare checksum of {len(digest)} hex digits matches no algorithm "
                              f"(32 MD5, 40 SHA-1, 56 SHA-224, 64 SHA-256, 96 SHA-384, 128 SHA-512)")
    return alg, digest


def label(alg: str, digest: str) -> str:
    return f"{{{LABELS[alg]}}}{digest}"


# ---- compression

SUFFIXES = {".bz2": "bz2", ".gz": "gz", ".tgz": "gz", ".xz": "xz", ".zip": "zip"}
MAGIC = (("bz2", re.compile(rb"BZh[1-9]1AY&SY")), ("gz", re.compile(rb"\x1f\x8b\x08")),
         ("xz", re.compile(rb"\xfd7zXZ\x00")), ("zip", re.compile(rb"PK\x03\x04")))
NAMES = {"bz2": "bzip2", "gz": "gzip", "xz": "xz", "zip": "zip"}
OUT = 4 << 20       # decompressed bytes per step: memory stays bounded whatever the ratio


def suffix_compression(url: str) -> str | None:
    path = urlsplit(url).path.lower()
    return next((kind for suf, kind in SUFFIXES.items() if path.endswith(suf)), None)


def magic_compression(head: bytes) -> str | None:
    return next((kind for kind, rx in MAGIC if rx.match(head)), None)


class _Streams:
    """One or more concatenated compressed streams (pbzip2, `cat a.gz b.gz`, multi-stream xz)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.d = self._new()
        self.ended = False

    def _new(self):
        if self.kind == "bz2":
            return bz2.BZ2Decompressor()
        if self.kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        return zlib.decompressobj(wbits=31)

    def feed(self, data: bytes, out) -> None:
        while data:
            if self.d is None:
                if not data.strip(b"\0"):
                    return                     # stream padding
                self.d = self._new()
            d = self.d
            if self.kind == "gz":
                out(d.decompress(data, OUT))
                while d.unconsumed_tail and not d.eof:     # at eof zlib leaves a stale tail: unused_data holds it
                    out(d.decompress(d.unconsumed_tail, OUT))
            else:
                out(d.decompress(data, OUT))
                while not d.eof and not d.needs_input:
                    out(d.decompress(b"", OUT))
            data = b""
            if d.eof:
                data, self.d, self.ended = bytes(d.unused_data), None, True

    def finish(self) -> None:
        if self.d is not None or not self.ended:
            raise InvalidArgument(f"the {NAMES[self.kind]} data is truncated (the download is incomplete or "
                                  "the file is damaged)")


class _Zip:
    """The one member of a zip archive, streamed: local header, deflated or stored data, then the central
    directory, which must list exactly one entry (whose CRC must match)."""

    def __init__(self):
        self.buf, self.state, self.d, self.left = b"", "header", None, 0
        self.trailer, self.crc = b"", 0

    def feed(self, data: bytes, out) -> None:
        if self.state == "trailer":
            self.trailer = (self.trailer + bytes(data))[-(1 << 20):]
            return
        if self.state == "header":
            self.buf += bytes(data)
            if len(self.buf) < 30:
                return
            (sig, _, flags, method, _, _, _, csize, _, nlen, xlen) = struct.unpack("<IHHHHHIIIHH", self.buf[:30])
            if len(self.buf) < 30 + nlen + xlen:
                return
            if sig != 0x04034B50:
                raise InvalidArgument("the zip data does not start with a local file header")
            if flags & 1:
                raise InvalidArgument("the zip member is encrypted")
            if method == 8:
                self.d = zlib.decompressobj(-15)
            elif method == 0 and not flags & 8 and csize != 0xFFFFFFFF:
                self.left = csize
            else:
                raise InvalidArgument(f"zip compression method {method} cannot be streamed: use deflate "
                                      "(zip's default)")
            data, self.buf, self.state = self.buf[30 + nlen + xlen:], b"", "data"

        def emit(chunk):
            self.crc = zlib.crc32(chunk, self.crc)
            out(chunk)
        if self.d is not None:
            emit(self.d.decompress(data, OUT))
            while self.d.unconsumed_tail and not self.d.eof:
                emit(self.d.decompress(self.d.unconsumed_tail, OUT))
            if self.d.eof:
                self.state, self.trailer = "trailer", bytes(self.d.unused_data)
        else:
            take = bytes(data[:self.left])
            self.left -= len(take)
            emit(take)
            if not self.left:
                self.state, self.trailer = "trailer", bytes(data[len(take):])

    def finish(self) -> None:
        if self.state != "trailer":
            raise InvalidArgument("the zip data is truncated (the download is incomplete or the file is damaged)")
        end = self.trailer.rfind(b"PK\x05\x06")
        if end < 0 or len(self.trailer) < end + 22:
            raise InvalidArgument("the zip archive has no end-of-central-directory record")
        entries = struct.unpack("<H", self.trailer[end + 10:end + 12])[0]
        z64 = self.trailer.rfind(b"PK\x06\x06")
        if entries == 0xFFFF and z64 >= 0:
            entries = struct.unpack("<Q", self.trailer[z64 + 32:z64 + 40])[0]
        if entries != 1:
            raise InvalidArgument(f"the zip archive has {entries} members; it must hold exactly one, the image")
        cd = self.trailer.find(b"PK\x01\x02")
        if cd >= 0 and struct.unpack("<I", self.trailer[cd + 16:cd + 20])[0] != self.crc:
            raise InvalidArgument("the zip member's CRC does not match its data (the file is damaged)")


class TooLarge(LocalError):
    """The download, or what it unpacks to, passed the size limit: stop at once (no retry, no other mirror)."""


class Sink:
    """Takes the downloaded bytes in order: hashes them, finds the compression in the first bytes, and
    writes the (decompressed) image to `out_fd` sequentially. limit: bytes the download and the image may each
    reach at most (None: no limit); past it TooLarge stops the stream where it is, so a decompression bomb
    writes the limit, not what it would expand to (decompression goes OUT bytes at a time)."""

    def __init__(self, out, url: str, algorithm: str | None, compression: str = "auto", limit: int | None = None,
                 limit_setting: str | None = None):
        if compression not in ("auto", "none"):
            raise InvalidArgument(f"compression must be auto or none, not {compression!r}")
        self.limit, self.limit_setting = limit, limit_setting
        self.out, self.url, self.mode = out, url, compression
        self.hash = hashlib.new(algorithm or "sha256")
        self.algorithm = algorithm or "sha256"
        self.head, self.kind, self.decoder = b"", None, None
        self.downloaded = self.written = 0
        self.error = None       # why the data could not be unpacked; the bytes are still hashed

    def _over(self, what: str) -> None:
        raise TooLarge(f"{what} more than {self.limit} bytes, the limit"
                       + (f" ({self.limit_setting})" if self.limit_setting else "") + "; stopped there")

    def _emit(self, data) -> None:
        if data:
            if self.limit is not None and self.written + len(data) > self.limit:
                self._over("the image unpacks to")
            try:
                if self.decoder is not None and not data.strip(b"\0"):
                    self.out.seek(len(data), 1)     # unpacked zeros stay a hole: disk written only for data
                else:
                    self.out.write(data)
            except OSError as e:
                raise LocalError(str(e)) from e
            self.written += len(data)

    def _guard(self, step, *args) -> None:
        if self.error is not None:
            return
        try:
            step(*args)
        except LocalError:
            raise
        except (InvalidArgument, OSError, EOFError, lzma.LZMAError, zlib.error, struct.error, ValueError) as e:
            kind = NAMES.get(self.kind, "")
            self.error = (str(e) if isinstance(e, InvalidArgument)
                          else f"the {kind} data cannot be decompressed ({e})".replace("the  data", "the data"))

    def _start(self) -> None:
        declared = suffix_compression(self.url) if self.mode == "auto" else None
        found = magic_compression(self.head) if self.mode == "auto" else None
        if declared and found != declared:
            raise InvalidArgument(f"{self.url} names {NAMES[declared]} compression but the data is not "
                                  f"{NAMES[declared]}")
        self.kind = found
        self.decoder = None if found is None else _Zip() if found == "zip" else _Streams(found)
        head, self.head = self.head, b""
        self._feed(head)

    def _feed(self, data) -> None:
        if self.decoder is None:
            self._emit(data)
        else:
            self.decoder.feed(data, self._emit)

    def write(self, data) -> None:
        self.hash.update(data)
        self.downloaded += len(data)
        if self.limit is not None and self.downloaded > self.limit:
            self._over("the download is")
        if self.kind is None and self.decoder is None and self.head is not None and len(self.head) < 16:
            self.head += bytes(data)
            if len(self.head) >= 16:
                self._guard(self._start)
                self.head = None
            return
        self._guard(self._feed, data)

    def close(self) -> str:
        """Finish the stream; returns the hex digest of what was downloaded (see .error for unpacking)."""
        if self.head is not None:
            self._guard(self._start)
            self.head = None
        if self.decoder is not None:
            self._guard(self.decoder.finish)
            try:
                self.out.truncate(self.written)     # a final hole still counts in the image's size
            except OSError as e:
                raise LocalError(str(e)) from e
        return self.hash.hexdigest()


# ---- what the image is

KVM_FORMATS = {"QCOW2": "qcow2", "RAW": "raw", "ISO": "raw"}


def sniff(path: str) -> str:
    """The image format from its magic bytes (qemu's own probes, the common ones); "raw" when none matches."""
    with open(path, "rb") as f:
        return sniff_bytes(f.read(1024))


def sniff_bytes(head: bytes) -> str:
    table = ((b"QFI\xfb", "qcow2"), (b"QED\x00", "qed"), (b"KDMV", "vmdk"), (b"# Disk DescriptorFile", "vmdk"),
             (b"vhdxfile", "vhdx"), (b"conectix", "vpc"), (b"LUKS\xba\xbe", "luks"), (b"WithoutFreeSpace", "parallels"),
             (b"WithouFreSpacExt", "parallels"), (b"Bochs Virtual HD Image", "bochs"), (b"OOOM", "qcow"))
    for magic, fmt in table:
        if head.startswith(magic):
            return "qcow" if fmt == "qcow" and head[4:8] == b"\0\0\0\x01" else fmt
    if len(head) >= 0x44 and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return "vdi"
    return "raw"


def _qcow2_header(path: str) -> None:
    with open(path, "rb") as f:
        qcow2_header(lambda offset, count: os.pread(f.fileno(), count, offset))


def qcow2_header(read, what: str = "templates") -> None:
    """Refuse what would make QEMU open other files: a backing file or an external data file. read(offset, count)
    reads the image; the header is checked from its bytes before qemu-img ever opens it."""
    h = read(0, 104)
    if len(h) < 72:
        raise InvalidArgument("the qcow2 header is truncated")
    version, backing_off, backing_len = struct.unpack(">IQI", h[4:20])
    crypt = struct.unpack(">I", h[32:36])[0]
    if backing_off:
        name = read(backing_off, min(backing_len, 1023)).decode(errors="replace")
        raise InvalidArgument(f"the qcow2 image has a backing file ({name!r}); {what} must be self-contained "
                              "(qemu-img convert -O qcow2 it into one image)")
    if version >= 3 and len(h) >= 80 and struct.unpack(">Q", h[72:80])[0] & 4:
        raise InvalidArgument(f"the qcow2 image uses an external data file; {what} must be self-contained")
    if crypt:
        raise InvalidArgument(f"the qcow2 image is encrypted; {what} cannot be")


def qemu_facts(data: dict, what: str = "templates") -> dict:
    """{"size", "physical_size"} from `qemu-img info -f <format>` of a user's image, refusing a backing or data
    file (the header check before qemu-img caught them already; this is the same rule from qemu's side)."""
    if data.get("backing-filename") or data.get("full-backing-filename"):
        raise InvalidArgument(f"the image has a backing file ({data.get('backing-filename')!r}); {what} must be "
                              "self-contained")
    if (data.get("format-specific") or {}).get("data", {}).get("data-file"):
        raise InvalidArgument(f"the qcow2 image uses an external data file; {what} must be self-contained")
    return {"size": data["virtual-size"], "physical_size": data.get("actual-size", 0)}


def check_image(path: str, image_format: str) -> dict:
    """{"format", "size", "physical_size"} of a downloaded image that is what image_format says; refused else."""
    fmt = KVM_FORMATS.get(str(image_format).upper())
    if fmt is None:
        raise InvalidArgument(f"format {image_format!r} is not a KVM template format: use QCOW2, RAW or ISO")
    found = sniff(path)
    declared = str(image_format).upper()
    if found != fmt:
        what = "raw data (no image header)" if found == "raw" else f"a {found} image"
        raise InvalidArgument(f"the file was registered as {declared} but it is {what}"
                              + (f"; register it as {found.upper()}" if found in ("qcow2", "raw") else ""))
    if fmt == "qcow2":
        _qcow2_header(path)
    if declared == "ISO":
        with open(path, "rb") as f:
            f.seek(0x8001)
            if f.read(5) not in (b"CD001", b"BEA01"):
                raise InvalidArgument("the file was registered as ISO but has no ISO 9660 or UDF volume descriptor")
    data = json.loads(images.qemu_img(["info", "-U", "--output=json", "-f", fmt, path], "probe the downloaded image",
                                      timeout=60))
    return {"format": fmt, **qemu_facts(data)}


def check_import(pool, name: str) -> dict:
    """{"format", "size", "physical_size"} of an image file an admin imports as a volume (importVolume): the one
    place a pool file's format is probed, since no one recorded it. A symbolic link or a file with other hard
    links (it could be any file on the host) is refused, opened without following links (O_NOFOLLOW) and
    read through that one descriptor, so a link put in its place meanwhile is not followed either; the format
    comes from its magic bytes, and a qcow2 with a backing or external data file is refused before qemu-img
    opens it. Pools holding only raw images (RBD) import raw: nothing to probe."""
    images.check_name(name)
    if not pool.exists(name):
        raise NotFound(f"{name} does not exist in pool {pool.uuid}")
    if pool.formats == ("raw",):
        data = json.loads(images.qemu_img(["info", "-U", "--output=json", "-f", "raw", pool.target(name)],
                                          f"image {name}", timeout=60, pools=(pool,)))
        return {"format": "raw", **qemu_facts(data, "imported images")}
    if isinstance(pool, images.DirectoryPool):
        try:
            fd = os.open(pool.target(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InvalidArgument(f"{name} in pool {pool.uuid} is a symbolic link; only image files in the "
                                      "pool can be imported") from None
            raise InvalidArgument(f"{name} in pool {pool.uuid} cannot be opened: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgument(f"{name} in pool {pool.uuid} is not a regular file")
            if st.st_nlink != 1:
                raise InvalidArgument(f"{name} in pool {pool.uuid} has {st.st_nlink} hard links; only an image "
                                      "file with no other name can be imported (copy it)")
            return _import_facts(name, lambda off, n: os.pread(fd, n, off), f"/dev/fd/{fd}", (fd,), ())
        finally:
            os.close(fd)
    with pool.reader(name) as (_size, _mtime, read):      # NFS: lookup refuses symbolic links on the way
        return _import_facts(name, read, pool.target(name), (), (pool,))


def _import_facts(name: str, read, target: str, fds: tuple, pools: tuple) -> dict:
    found = sniff_bytes(read(0, 1024))
    if found not in images.FORMATS:
        raise InvalidArgument(f"{name} is a {found} image; only qcow2 and raw images can be imported "
                              f"(qemu-img convert -O qcow2 it first)")
    if found == "qcow2":
        qcow2_header(read, "imported images")
    data = json.loads(images.qemu_img(["info", "-U", "--output=json", "-f", found, target], f"image {name}",
                                      timeout=60, pools=pools, pass_fds=fds))
    return {"format": found, **qemu_facts(data, "imported images")}
