"""Template downloads on a host: from HTTP(S) URLs or a metalink into a pool, verified and probed.

    result = download(pool, "tmpl-1234", "QCOW2", urls=["https://a/img.qcow2.bz2"], checksum="{SHA-256}…",
                      policy=Policy(allowed_cidrs=["10.0.0.0/8"]), work_dir="/var/lib/volstack/downloads",
                      progress=lambda percent, done_bytes: …)
    check_source(["https://a/img.qcow2.bz2"], result["validators"], policy)   # {"changed", "reason", …}
    verify(["https://a/img.qcow2.bz2"], checksum="{SHA-256}…", policy=policy)  # hash only, nothing stored

The order of work: sources (metalink mirrors ordered by location then priority, each URL checked against
the policy) -> bytes (in parallel Range segments over several mirrors when they all support ranges,
else one stream that resumes on the next mirror) -> checksum of the bytes as downloaded, up to
`attempts` times when it does not match (seed 002; after a failed segmented attempt each further
attempt streams from one mirror, so a mirror serving bad bytes is found out) -> decompression ->
format check (`unpack.check_image`) -> the image is put under its final name in one step.

Temporary files: for a directory pool they live in the pool directory itself (`.<name>.download`,
and `images.part_name(name)` for the image), so the final step is a rename on one filesystem; for an
NFS pool they live in `work_dir` and the image is copied with `images.copy` (qemu-img over nfs://,
written under the part name, then renamed). Every failure removes them; `cleanup()` removes them after
a crash. Nothing partial ever has the final name.
"""
import errno
import hashlib
import os
import queue
import re
import threading
import time

from volstack.agent import fetch, images, metalink, unpack
from volstack.agent.errors import Failed, InvalidArgument, Unavailable
from volstack.agent.fetch import Policy

__all__ = ["Policy", "download", "verify", "check_source", "compare", "resolve_sources", "temp_paths", "cleanup",
           "place"]

ATTEMPTS = 3
MIN_SEGMENTED = 4 << 20      # below this, one stream is as fast as several


def _is_metalink(url: str) -> bool:
    return re.search(r"\.(metalink|meta4)$", url.split("?")[0].lower()) is not None


def resolve_sources(urls=None, metalink_url=None, policy: Policy | None = None, location: str | None = None) -> dict:
    """{"urls": [allowed URLs in the order to try], "refused": [reasons], "hashes": {alg: hex},
    "size": bytes or None} from a URL list or a metalink URL (a lone URL ending .metalink/.meta4 is one)."""
    policy = policy or Policy()
    if isinstance(urls, str):
        urls = [urls]
    if urls is not None and (not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)):
        raise InvalidArgument("urls must be a list of http(s) URLs")
    if metalink_url is None and urls and len(urls) == 1 and _is_metalink(urls[0]):
        metalink_url, urls = urls[0], None
    if bool(urls) == bool(metalink_url):
        raise InvalidArgument("give either urls (a list of http(s) URLs) or metalink (the URL of a metalink file)")
    hashes, size = {}, None
    if metalink_url:
        policy.check(metalink_url)
        data = bytearray()

        def keep(chunk):
            data.extend(chunk)
            if len(data) > metalink.MAX_BYTES:
                raise InvalidArgument(f"metalink {metalink_url} is larger than {metalink.MAX_BYTES} bytes")
        try:
            fetch.stream([metalink_url], keep, lambda *_: None, policy)
        except Unavailable as e:
            raise Unavailable(f"cannot fetch the metalink: {e}") from None
        ml = metalink.parse(bytes(data))
        hashes, size = ml.hashes, ml.size
        urls = [m.url for m in metalink.order(ml.mirrors, location)]
    allowed, refused = [], []
    for u in urls:
        if u.split("?")[0].lower().endswith(".torrent"):
            refused.append(f"{u}: torrents are not supported")
            continue
        try:
            policy.check(u)
            allowed.append(u)
        except InvalidArgument as e:
            refused.append(str(e))
        except Unavailable as e:
            allowed.append(u)             # may resolve later; the download will say if it does not
            refused.append(f"(warning) {e}")
    if not allowed:
        raise InvalidArgument("no usable source: " + "; ".join(refused))
    return {"urls": allowed, "refused": refused, "hashes": hashes, "size": size}


def temp_paths(pool: images.Pool, name: str, work_dir: str | None) -> dict:
    """Where a download into pool/name keeps its temporary files (all removed by cleanup())."""
    if isinstance(pool, images.DirectoryPool):
        return {"dir": pool.root, "download": os.path.join(pool.root, f".{name}.download"),
                "image": pool.target(images.part_name(name)), "local": True}
    if not work_dir:
        raise InvalidArgument("a download into an NFS pool needs a local work directory")
    base = f"{re.sub(r'[^A-Za-z0-9_-]', '_', str(pool.uuid))}+{name}"
    return {"dir": work_dir, "download": os.path.join(work_dir, f"{base}.download"),
            "image": os.path.join(work_dir, f"{base}.image"), "local": False}


def cleanup(pool: images.Pool, name: str, work_dir: str | None) -> bool:
    """Remove what an unfinished download left behind; True if there was anything."""
    found = False
    try:
        paths = temp_paths(pool, name, work_dir)
    except InvalidArgument:
        paths = {}
    for key in ("download", "image"):
        try:
            os.unlink(paths[key])
            found = True
        except (KeyError, FileNotFoundError):
            pass
    if not isinstance(pool, images.DirectoryPool) and pool.exists(images.part_name(name)):
        pool.remove(images.part_name(name))
        found = True
    return found


class _Progress:
    """percent 0..90 while downloading, then fixed steps; calls the callback only when the percent moves."""

    def __init__(self, cb, hint: int | None):
        self.cb, self.hint, self.last, self.lock = cb, hint, -1, threading.Lock()
        self.bytes = 0

    def bytes_done(self, done: int, total: int | None) -> None:
        total = total or self.hint
        self.set(int(90 * done / total) if total else 0, done)

    def set(self, percent: int, done: int | None = None) -> None:
        with self.lock:
            if done is not None:
                self.bytes = done
            if percent == self.last or self.cb is None:
                return
            self.last = percent
        self.cb(min(percent, 100), self.bytes)


class Pipeline:
    """Receiving on the caller's thread, hashing/unpacking/writing on another: hashlib, zlib and file
    writes release the GIL, so on two cores the checksum costs next to nothing in wall time."""

    def __init__(self, consume, depth: int = 8):
        self.q, self.error, self.fed = queue.Queue(depth), None, False
        self.thread = threading.Thread(target=self._run, args=(consume,), name="download-sink", daemon=True)
        self.thread.start()

    def _run(self, consume) -> None:
        while (data := self.q.get()) is not None:
            if self.error is None:
                try:
                    consume(data)
                except BaseException as e:      # raised to the receiving thread on its next write
                    self.error = e

    def write(self, data) -> None:
        if self.error is not None:
            raise self.error
        self.fed = True
        self.q.put(bytes(data))      # a copy: the receiver reuses its buffer

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fetch_once(urls, paths, algorithm, compression, policy, prog, segmented: bool, limit=None,
                limit_setting=None) -> dict:
    """One attempt: the image file at paths["image"], with the digest of the downloaded bytes."""
    if segmented:
        probes, errors = [], []
        for u in urls:
            try:
                probes.append(fetch.probe(u, policy))
            except Exception as e:       # the stream below tries it again and reports it
                errors.append(f"{u}: {fetch.reason(e)}")
        ranged = [p for p in probes if p["ranges"]]
        sizes = {p["size"] for p in ranged}
        if len(ranged) >= 2 and len(sizes) == 1 and sizes.pop() >= MIN_SEGMENTED:
            size = ranged[0]["size"]
            if limit is not None and size > limit:
                unpack.Sink(None, urls[0], None, limit=limit, limit_setting=limit_setting)._over("the download is")
            fd = os.open(paths["download"], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            st = {"sink": None, "out": None, "hash": hashlib.new(algorithm)}

            def ordered(a, b):      # hashes (and unpacks) in file order while later segments still arrive
                while a < b:
                    data = os.pread(fd, min(fetch.BUF, b - a), a)
                    if not data:
                        raise fetch.LocalError(f"{paths['download']} is shorter than what was written")
                    if a == 0 and compression == "auto" and (unpack.magic_compression(data[:16]) or
                                                              unpack.suffix_compression(urls[0])):
                        st["out"] = open(paths["image"], "wb")
                        st["sink"] = unpack.Sink(st["out"], urls[0], algorithm, compression, limit, limit_setting)
                    if st["sink"] is not None:
                        st["sink"].write(data)
                    else:
                        st["hash"].update(data)
                    a += len(data)
                    st["done"] = a
            try:
                os.ftruncate(fd, size)
                got = fetch.segmented([p["url"] for p in ranged], fd, size, prog.bytes_done, policy, ordered=ordered)
                sink = st["sink"]
                if st.get("done") != size:
                    raise fetch.LocalError(f"only {st.get('done', 0)} of {size} bytes were read back in order")
                digest = sink.close() if sink else st["hash"].hexdigest()
            finally:
                os.close(fd)
                if st["out"]:
                    st["out"].close()
            kind, error = (sink.kind, sink.error) if sink else (None, None)
            if sink:        # the image is the unpacked copy
                _unlink(paths["download"])
            else:           # the download is the image: no copy
                os.rename(paths["download"], paths["image"])
            v = dict(ranged[0])
            v.pop("ranges")
            return {"digest": digest, "validators": v, "downloaded": size, "mirrors": got["mirrors"],
                    "compression": kind, "segmented": True, "error": error}
        urls = [p["url"] for p in probes] + [u for u in urls if u not in {p["url"] for p in probes}]
    with open(paths["image"], "wb") as out:
        sink = unpack.Sink(out, urls[0], algorithm, compression, limit, limit_setting)
        pipe = Pipeline(sink.write)

        def source(url):       # the first mirror to send bytes decides the URL suffix that is checked
            if not pipe.fed:
                sink.url = url
        try:
            res = fetch.stream(urls, pipe.write, prog.bytes_done, policy, on_source=source)
        finally:
            pipe.close()
        digest = sink.close()
    return {"digest": digest, "validators": res["validators"], "downloaded": res["size"],
            "mirrors": res["mirrors"], "compression": sink.kind, "segmented": False, "error": sink.error}


def download(pool: images.Pool, name: str, image_format: str, *, urls=None, metalink_url=None, checksum=None,
             policy: Policy | None = None, location: str | None = None, work_dir: str | None = None,
             progress=None, attempts: int = ATTEMPTS, segmented: bool = True, compression: str = "auto",
             max_size: int | None = None, limit_setting: str | None = None) -> dict:
    """Download, verify and probe one template into pool/name. See the module docstring; the result:
    {"path", "format" (qemu format on the pool), "image_format", "size" (virtual), "physical_size",
     "downloaded" (bytes transferred), "checksum" ("{ALG}hex" of the downloaded bytes), "verified",
     "compression", "source", "mirrors", "segmented", "attempts", "validators", "refused"}."""
    images.check_name(name)
    fmt = unpack.KVM_FORMATS.get(str(image_format).upper())
    if fmt is None:
        raise InvalidArgument(f"format {image_format!r} is not a KVM template format: use QCOW2, RAW or ISO")
    if not isinstance(attempts, int) or not 1 <= attempts <= 10:
        raise InvalidArgument("attempts must be 1 to 10")
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0):
        raise InvalidArgument("max_size must be a number of bytes")
    policy = policy or Policy()
    if pool.exists(name):
        raise InvalidArgument(f"{name} already exists in pool {pool.uuid}")
    src = resolve_sources(urls, metalink_url, policy, location)
    expected = _expected(checksum, src)
    algorithm = expected[0] if expected else "sha256"
    paths = temp_paths(pool, name, work_dir)
    os.makedirs(paths["dir"], exist_ok=True)
    prog = _Progress(progress, src["size"])
    mismatches, suspects, urls_now = [], [], list(src["urls"])
    try:
        for attempt in range(1, attempts + 1):
            cleanup(pool, name, work_dir)
            use_segments = segmented and attempt == 1 and len(urls_now) > 1
            got = _fetch_once(urls_now, paths, algorithm, compression, policy, prog, use_segments, max_size,
                              limit_setting)
            if expected is not None and got["digest"] != expected[1]:
                bad = unpack.label(algorithm, got["digest"])
            elif got["error"] and expected is None:
                bad = got["error"]      # no checksum to tell a bad transfer from a bad file: try again
            elif expected is None and src["size"] is not None and got["downloaded"] != src["size"]:
                bad = f"{got['downloaded']} bytes where the metalink says {src['size']}"
            elif got["error"]:
                raise InvalidArgument(f"{got['error']}; the checksum matches, so the file at the source is damaged")
            else:
                break
            mismatches.append(f"attempt {attempt} from {', '.join(got['mirrors']) or 'no mirror'}: {bad}")
            if not got["segmented"]:     # a single mirror served these bytes: try it last from now on
                urls_now = _suspect_last(src["urls"], suspects, got["mirrors"])
        else:
            what = f"checksum mismatch: expected {unpack.label(*expected)}" if expected else "unusable data"
            raise InvalidArgument(f"{what} after {attempts} attempts; got " + "; ".join(mismatches))
        prog.set(92)
        have = unpack.check_image(paths["image"], image_format)
        prog.set(95)
        fmt = place(pool, name, paths, fmt, prog)
        have = images.info(pool, name, fmt) if not paths["local"] else have
        prog.set(100)
    except BaseException as e:
        try:
            cleanup(pool, name, work_dir)
        except Exception:
            pass              # the pool went away too; recover()/the next attempt removes the rest
        if isinstance(e, unpack.TooLarge):
            raise InvalidArgument(str(e)) from None
        if isinstance(e, OSError) and not isinstance(e, (InvalidArgument, Unavailable, Failed)):
            raise Failed(f"download into pool {pool.uuid} failed on this host: {e}") from None
        if isinstance(e, fetch.LocalError):
            raise Failed(f"writing the download on this host failed: {e}") from None
        raise
    first = next(iter(got["mirrors"]), None)
    return {"path": name, "format": fmt, "image_format": str(image_format).upper(), "size": have["size"],
            "physical_size": have["physical_size"], "downloaded": got["downloaded"],
            "checksum": unpack.label(algorithm, got["digest"]), "verified": expected is not None,
            "compression": got["compression"], "source": first, "mirrors": got["mirrors"],
            "segmented": got["segmented"], "attempts": attempt, "validators": got["validators"],
            "refused": src["refused"]}


def _expected(checksum, src: dict) -> tuple | None:
    """(algorithm, hex) to check: the registered checksum, else the strongest hash a metalink gives."""
    expected = unpack.parse_checksum(checksum)
    if expected is None and src["hashes"]:
        alg = next(a for a in unpack.STRONGEST if a in src["hashes"])
        expected = (alg, src["hashes"][alg])
    return expected


def _suspect_last(urls: list, suspects: list, served: dict) -> list:
    """The URLs to try next: mirrors that served bad bytes (added to suspects) go to the end."""
    suspects += [u for u in served if u not in suspects]
    return [u for u in urls if u not in suspects] + suspects


def verify(urls=None, metalink_url=None, checksum=None, policy: Policy | None = None, location: str | None = None,
           progress=None, attempts: int = ATTEMPTS) -> dict:
    """Fetch the source and hash it without keeping the bytes: the registration-time checksum check of a
    direct-download template. Same sources, order and retry rule as download() (a mirror that served bad
    bytes is tried last); the checksum is of the bytes as downloaded, so nothing is unpacked. Returns
    {"checksum", "verified": True, "downloaded", "mirrors", "validators", "attempts"}; a mismatch on every
    attempt is an InvalidArgument naming each attempt's digest."""
    if not isinstance(attempts, int) or not 1 <= attempts <= 10:
        raise InvalidArgument("attempts must be 1 to 10")
    policy = policy or Policy()
    src = resolve_sources(urls, metalink_url, policy, location)
    expected = _expected(checksum, src)
    if expected is None:
        raise InvalidArgument("nothing to verify: give a checksum (or a metalink that lists a hash)")
    prog = _Progress(progress, src["size"])
    mismatches, suspects, urls_now = [], [], list(src["urls"])
    for attempt in range(1, attempts + 1):
        digest = hashlib.new(expected[0])
        pipe = Pipeline(digest.update)
        try:
            got = fetch.stream(urls_now, pipe.write, prog.bytes_done, policy)
        finally:
            pipe.close()
        if digest.hexdigest() == expected[1]:
            prog.set(100)
            return {"checksum": unpack.label(*expected), "verified": True, "downloaded": got["size"],
                    "mirrors": got["mirrors"], "validators": got["validators"], "attempts": attempt}
        mismatches.append(f"attempt {attempt} from {', '.join(got['mirrors']) or 'no mirror'}: "
                          f"{unpack.label(expected[0], digest.hexdigest())}")
        urls_now = _suspect_last(src["urls"], suspects, got["mirrors"])
    raise InvalidArgument(f"checksum mismatch: expected {unpack.label(*expected)} after {attempts} attempts; got "
                          + "; ".join(mismatches))


def place(pool: images.Pool, name: str, paths: dict, fmt: str, prog: "_Progress | None" = None) -> str:
    """Put the verified image at paths["image"] under its final name in pool (see temp_paths); returns the format
    it has there (an RBD pool holds raw)."""
    if paths["local"]:
        final = pool.target(name)
        try:
            os.link(paths["image"], final)      # never replaces a file someone else put there meanwhile
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise InvalidArgument(f"{name} appeared in pool {pool.uuid} during the download") from None
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            os.rename(paths["image"], final)     # no hard links on this filesystem
        _unlink(paths["image"])
        return fmt
    local = images.DirectoryPool({"uuid": "download-work", "path": paths["dir"]}, "localhost")
    placed = images.copy(local, os.path.basename(paths["image"]), pool, name, fmt,
                         prog and (lambda p: prog.set(95 + int(p * 4 / 100))), src_format=fmt)
    _unlink(paths["image"])
    return placed["format"]


def check_source(urls=None, known: dict | None = None, policy: Policy | None = None, metalink_url=None) -> dict:
    """Whether the source changed since `known` (the validators a download returned), from a HEAD request:
    {"changed": True/False/None (cannot tell), "reason", "validators"}. The URL the validators came from
    is asked first; on another mirror only the size is compared (ETags differ between servers)."""
    policy = policy or Policy()
    known = known or {}
    src = resolve_sources(urls, metalink_url, policy)
    order = sorted(src["urls"], key=lambda u: u != known.get("url"))
    errors = []
    for u in order:
        try:
            now = fetch.head(u, policy)
            break
        except Exception as e:
            errors.append(f"{u}: {fetch.reason(e)}")
    else:
        raise Unavailable("cannot reach the source: " + "; ".join(errors))
    changed, why = compare(known, now)
    return {"changed": changed, "reason": why, "validators": now, "checked": time.time()}


def compare(known: dict, now: dict) -> tuple:
    """(changed True/False/None, reason) between validators; from another URL only the size counts."""
    same_url = now.get("url") == known.get("url")
    checks = (("etag", "ETag"), ("last_modified", "Last-Modified"), ("size", "size")) if same_url else \
        (("size", "size"),)
    compared = False
    for key, what in checks:
        if known.get(key) is not None and now.get(key) is not None:
            compared = True
            if str(known[key]) != str(now[key]):
                return True, f"{what} changed from {known[key]} to {now[key]}"
    if not compared:
        return None, "the source gives nothing to compare (no ETag, Last-Modified or size)"
    return False, "unchanged"
