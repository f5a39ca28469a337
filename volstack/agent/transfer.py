"""The agent's transfer endpoints: extract downloads and browser uploads of image-store objects.

No bearer token here: the signed URL is the credential (volstack/transfer_signing.py), and the agent
keeps no state about URLs; the signed metadata says which store object to serve or write.

    GET|HEAD /transfer/download/<metadata>/<filename>?expires=…&signature=…
        the object, byte for byte (single Range requests: `curl -C -` resumes)
    POST     /transfer/upload/<object uuid>   headers X-signature, X-metadata, X-expires
        the file as a multipart form field "file" (what CloudStack's UI sends) or as the raw body

An upload is streamed to a temporary name (download.temp_paths), hashed as it arrives, checked against
the checksum, probed once (unpack.check_image: declared format, no backing or data file) and only then
put under its final name (download.place). Its outcome is kept in <state>/uploads/<uuid>.json, which
the management server reads with the `upload_status` command and, once it has settled the object,
acknowledges with `upload_collected`; one object takes one upload. Records are pruned at start-up and
before each new upload: collected ones once their parameters expired (until then the record is what
refuses a second POST), failed ones nobody collected a week past expiry, done ones never before they
were collected (the file is on the store: the management server must learn it, not abandon it).

An agent serves at most `--max-transfers` transfers at once (503 with Retry-After beyond), and a transfer
whose client neither sends nor takes a byte for `--transfer-timeout` seconds ends: its thread and its
hold on the store object are freed.
"""
import hashlib
import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from urllib.parse import parse_qs

from volstack import transfer_signing as signing
from volstack.agent import download, images, unpack
from volstack.agent.errors import AgentError, Busy, Failed, InvalidArgument, NotFound

log = logging.getLogger("volstack.agent.transfer")
CHUNK = 1 << 20
FORM_SLACK = 1 << 20          # what a multipart form may add to the file it carries
KEEP_UNCOLLECTED = 7 * 86400  # a failed upload's record nobody collected stays this long past its expiry
IDLE_TIMEOUT = 300            # seconds a client may send or take nothing before its transfer ends
# Each transfer is a thread (an upload two: receiving and hashing+writing); 16 at once keep a 10 GbE link
# busy with clients of 80 MB/s each without letting stalled clients exhaust the agent.
MAX_TRANSFERS = 16


class TooLarge(InvalidArgument):
    status = 413


class Interrupted(AgentError):
    status = 400


class Slots:
    """The agent's transfer slots: `limit` transfers at once, each ending after `idle` seconds without progress."""

    def __init__(self, limit: int = MAX_TRANSFERS, idle: float = IDLE_TIMEOUT):
        self.limit, self.idle = limit, idle
        self._free = threading.BoundedSemaphore(limit)

    def take(self) -> bool:
        return self._free.acquire(blocking=False)

    def give_back(self) -> None:
        self._free.release()


# ---------------------------------------------------------------- HTTP entry points (agent/server.py)

def handle(h, method: str) -> None:
    """Answer one request under /transfer/ on the BaseHTTPRequestHandler h."""
    srv = h.server.agent_server
    slots: Slots = srv.transfers
    path = h.path.partition("?")[0]
    h.connection.settimeout(slots.idle)     # every send and receive: a silent client cannot hold a thread
    taken = False
    try:
        if method == "OPTIONS":
            return _reply(h, 204, None)
        taken = slots.take()
        if not taken:
            return _reply(h, 503, {"ok": False, "kind": "Busy", "error": f"this host already serves {slots.limit} "
                                   "transfers (the agent's --max-transfers); try again in a minute"},
                          {"Retry-After": "60"})
        if method in ("GET", "HEAD") and path.startswith(signing.DOWNLOAD):
            return _download(h, srv, head=method == "HEAD")
        if method == "POST" and path.startswith(signing.UPLOAD):
            return _upload(h, srv)
        raise NotFound(f"no transfer endpoint {method} {path}")
    except TimeoutError:
        log.info("transfer %s %s: the client sent or took nothing for %s s; closed", method, path[:80], slots.idle)
    except signing.Refused as e:
        _reply(h, 403, {"ok": False, "error": str(e), "kind": "Forbidden"})
    except AgentError as e:
        _reply(h, e.status, {"ok": False, "error": e.text, "kind": e.kind})
    except (BrokenPipeError, ConnectionResetError):
        log.info("transfer %s %s: the client went away", method, path[:80])
    except Exception as e:                  # never a traceback on the wire; the log has it
        log.exception("transfer %s %s failed", method, path[:80])
        try:
            _reply(h, 500, {"ok": False, "error": f"the transfer failed on this host: {type(e).__name__}",
                            "kind": "Failed"})
        except OSError:
            pass
    finally:
        if taken:
            slots.give_back()


def _reply(h, status: int, body: dict | None, headers: dict | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    h.send_response(status)
    _cors(h)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    if body is not None:
        h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    if data and h.command != "HEAD":
        h.wfile.write(data)


def _cors(h) -> None:
    """Browsers upload from the UI's origin to the agent's: let them (the signature is the access check)."""
    h.send_header("Access-Control-Allow-Origin", "*")
    h.send_header("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS")
    h.send_header("Access-Control-Allow-Headers", "X-signature, X-metadata, X-expires, Content-Type, Range")
    h.send_header("Access-Control-Expose-Headers", "Content-Length, Content-Range, Accept-Ranges")


# ---------------------------------------------------------------- downloads

@contextmanager
def _open(pool: images.Pool, name: str):
    """(size, mtime, read(offset, count), file or None) of a store object; the file is for sendfile."""
    if isinstance(pool, images.DirectoryPool):
        try:
            f = open(pool.target(name), "rb")
        except FileNotFoundError:
            raise NotFound(f"{name} is no longer on the image store") from None
        with f:
            st = os.fstat(f.fileno())
            yield st.st_size, int(st.st_mtime), lambda off, n: os.pread(f.fileno(), n, off), f
    elif hasattr(pool, "reader"):
        with pool.reader(name) as (size, mtime, read):
            yield size, mtime, read, None
    else:
        raise InvalidArgument(f"objects of a {type(pool).__name__} cannot be served for download")


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single `bytes=` range; None for the whole object. Unsatisfiable: ValueError."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or not (m.group(1) or m.group(2)):
        return None                 # multiple or malformed ranges: the whole object (allowed by RFC 9110)
    if not m.group(1):
        n = int(m.group(2))
        if n == 0:
            raise ValueError
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    if first >= size or last < first:
        raise ValueError
    return first, last


def _download(h, srv, head: bool) -> None:
    path, _, query = h.path.partition("?")
    q = parse_qs(query)
    metadata, _, _filename = path[len(signing.DOWNLOAD):].partition("/")
    claims = signing.verify(srv.token, metadata, path, (q.get("expires") or [""])[0],
                            (q.get("signature") or [""])[0])
    if claims.get("op") != "download":
        raise signing.Refused("this link is not a download link")
    agent = srv.agent
    pool, name = images.open_pool(claims.get("pool"), agent.hostname), images.check_name(claims.get("name"))
    with agent.hold(pool, name, "being downloaded", shared=True), _open(pool, name) as (size, mtime, read, file):
        etag = f'"{size:x}-{mtime:x}"'
        wanted = h.headers.get("Range")
        if wanted and h.headers.get("If-Range") not in (None, etag):
            wanted = None           # the object changed since the client's first part: send it whole
        try:
            rng = _range(wanted, size)
        except ValueError:
            return _reply(h, 416, {"ok": False, "error": f"the object has {size} bytes", "kind": "InvalidArgument"},
                          {"Content-Range": f"bytes */{size}"})
        first, last = rng or (0, size - 1)
        h.send_response(206 if rng else 200)
        _cors(h)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Disposition", f'attachment; filename="{claims.get("filename") or name}"')
        h.send_header("Content-Length", str(last - first + 1))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", etag)
        h.send_header("Last-Modified", h.date_time_string(mtime))
        if rng:
            h.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        h.end_headers()
        if head:
            return
        _send(h, read, file, first, last + 1)


def _send(h, read, file, start: int, end: int) -> None:
    pos = start
    if file is not None:        # the kernel copies file to socket (socket.sendfile keeps the idle timeout)
        h.wfile.flush()
        if h.connection.sendfile(file, start, end - start) < end - start:
            raise Failed("the object became shorter while it was being sent")
        return
    while pos < end:
        data = read(pos, min(end - pos, CHUNK))
        if not data:
            raise Failed("the object became shorter while it was being sent")
        h.wfile.write(data)
        pos += len(data)


# ---------------------------------------------------------------- uploads

def _records(agent) -> str:
    return agent.state_dir("uploads")


def _record_path(agent, oid: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", oid or ""):
        raise InvalidArgument(f"invalid upload id {oid!r}")
    return os.path.join(_records(agent), f"{oid}.json")


def _write(path: str, rec: dict) -> None:
    rec["updated"] = time.time()
    with open(path + ".new", "w") as f:
        json.dump(rec, f)
    os.replace(path + ".new", path)


_records_lock = threading.Lock()        # marking a record collected vs pruning it


def status(agent, oid: str) -> dict:
    """{"state": "none|in_progress|done|failed", "received", "total", "result" | "error", "updated",
    "collected"?}."""
    try:
        with open(_record_path(agent, oid)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"state": "none"}


def collected(agent, oid: str) -> dict:
    """The management server has settled the upload: its record may go once the parameters expired."""
    path = _record_path(agent, oid)
    with _records_lock:
        rec = status(agent, oid)
        if rec.get("state") not in ("done", "failed"):
            return {"collected": False, "state": rec.get("state")}
        if not rec.get("collected"):
            rec["collected"] = time.time()
            _write(path, rec)
    return {"collected": True, "state": rec["state"]}


def _each_record(agent):
    d = _records(agent)
    if not os.path.isdir(d):
        return
    for entry in os.scandir(d):
        if entry.name.endswith(".json"):
            try:
                with open(entry.path) as f:
                    yield entry.path, json.load(f)
            except (OSError, ValueError):
                continue


def prune(agent, now: float | None = None) -> int:
    """Drop the records nobody needs any more (see the module's docstring); returns how many."""
    now = time.time() if now is None else now
    dropped = 0
    with _records_lock:
        for path, rec in _each_record(agent):
            expired = rec.get("expires_at", 0)
            if rec.get("state") == "in_progress" or expired >= now:
                continue
            if rec.get("collected") or (rec.get("state") == "failed" and expired + KEEP_UNCOLLECTED < now):
                os.unlink(path)
                dropped += 1
    return dropped


def recover(agent) -> None:
    """At start-up: uploads cut short by the agent's death fail with that reason and leave no file;
    then the records nobody needs are pruned."""
    for path, rec in _each_record(agent):
        if rec.get("state") == "in_progress":
            try:
                download.cleanup(images.open_pool(rec["pool"], agent.hostname), rec["name"], agent.state_dir("downloads"))
            except Exception as e:          # the store may be away now; the name is never final anyway
                log.warning("upload %s: removing its partial file: %s", rec.get("id"), e)
            rec.update(state="failed", error="the host agent restarted during the upload; upload the file again "
                                             "with new upload parameters")
            _write(path, rec)
    prune(agent)


class _Body:
    """The request body: exactly `length` bytes, read in chunks."""

    def __init__(self, rfile, length: int, idle: float | None = None):
        self.rfile, self.left, self.read_bytes, self.idle = rfile, length, 0, idle

    def read(self) -> bytes:
        if self.left <= 0:
            return b""
        try:
            data = self.rfile.read(min(CHUNK, self.left))
        except TimeoutError:
            raise Interrupted(f"nothing arrived for {self.idle} s: the upload was abandoned; upload the file again "
                              "with new upload parameters") from None
        if not data:
            raise Interrupted(f"the upload was cut short after {self.read_bytes} bytes")
        self.left -= len(data)
        self.read_bytes += len(data)
        return data


def _multipart(body: _Body, boundary: bytes, sink) -> bool:
    """Stream the content of the form's file part (field "file", or the first part with a filename)
    to sink; other fields are read and dropped. True if there was a file part."""
    delim, found = b"--" + boundary, False
    marker = b"\r\n" + delim
    buf = b""
    while (i := buf.find(delim)) < 0:
        more = body.read()
        if not more:
            raise InvalidArgument("the form has no parts (multipart boundary not found)")
        buf = buf[-len(delim):] + more
    buf = buf[i + len(delim):]
    while True:
        while len(buf) < 2 and (more := body.read()):
            buf += more
        if buf.startswith(b"--"):
            return found                     # the closing delimiter; the epilogue is ignored
        while b"\r\n\r\n" not in buf:
            more = body.read()
            if not more or len(buf) > 65536:
                raise InvalidArgument("a form part has no end of headers")
            buf += more
        head, buf = buf.split(b"\r\n\r\n", 1)
        disp = next((ln for ln in head.decode("latin-1").split("\r\n") if ln.lower().startswith("content-disposition")), "")
        field = re.search(r'(?:^|;)\s*name="([^"]*)"', disp.partition(":")[2])
        is_file = not found and ((field and field.group(1) == "file") or "filename=" in disp)
        keep = len(marker) - 1
        while (i := buf.find(marker)) < 0:
            if len(buf) > keep:
                if is_file:
                    sink(buf[:-keep])
                buf = buf[-keep:]
            more = body.read()
            if not more:
                raise Interrupted("the form ends inside a part: the upload was cut short")
            buf += more
        if is_file:
            sink(buf[:i])
            found = True
        buf = buf[i + len(marker):]


def _upload(h, srv) -> None:
    path = h.path.partition("?")[0]
    oid = path[len(signing.UPLOAD):]
    claims = signing.verify(srv.token, h.headers.get("X-metadata", ""), path, h.headers.get("X-expires", ""),
                            h.headers.get("X-signature", ""))
    if claims.get("op") != "upload" or claims.get("id") != oid:
        raise signing.Refused("these upload parameters are for another object")
    agent = srv.agent
    rec_path = _record_path(agent, oid)
    try:
        length = int(h.headers.get("Content-Length") or -1)
    except ValueError:
        length = -1
    if length < 0:
        return _reply(h, 411, {"ok": False, "error": "send the file with a Content-Length", "kind": "InvalidArgument"})
    pool, name = images.open_pool(claims["pool"], agent.hostname), images.check_name(claims["name"])
    fmt = str(claims["format"]).upper()
    rec = {"id": oid, "state": "in_progress", "received": 0, "total": length, "pool": claims["pool"], "name": name,
           "started": time.time(), "expires_at": signing.parse_expiry(h.headers["X-expires"]).timestamp()}
    os.makedirs(os.path.dirname(rec_path), exist_ok=True)
    prune(agent)            # long-running agents: the directory holds only records still needed
    try:
        fd = os.open(rec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Busy(f"{oid} was already uploaded ({status(agent, oid).get('state')}); ask for new upload "
                   "parameters to upload another file") from None
    os.close(fd)
    _write(rec_path, rec)
    work_dir = agent.state_dir("downloads")
    try:
        with agent.hold(pool, name, "being uploaded"):
            if pool.exists(name):
                raise Busy(f"{name} already exists on the image store")
            result = _receive(h, pool, name, fmt, claims, length, work_dir, rec, rec_path)
    except AgentError as e:
        rec.update(state="failed", error=e.text)
        _write(rec_path, rec)
        log.info("upload %s failed: %s", oid, e.text)
        raise
    except Exception as e:
        rec.update(state="failed", error=f"the upload failed on host {agent.hostname}: {e}")
        _write(rec_path, rec)
        log.exception("upload %s failed", oid)
        raise Failed(rec["error"]) from None
    rec.update(state="done", result=result)
    _write(rec_path, rec)
    log.info("upload %s done: %s bytes into %s", oid, rec["received"], name)
    _reply(h, 200, {"ok": True, "id": oid, **result})


def _receive(h, pool, name, fmt, claims, length, work_dir, rec, rec_path) -> dict:
    """Body -> temporary file -> checksum -> probe -> final name; nothing is left behind on failure."""
    limit = claims.get("max_size")           # None: no limit
    if limit is not None and length > limit + FORM_SLACK:
        raise TooLarge(f"the file is larger than the limit of {limit} bytes ({claims.get('limit_setting')})")
    expected = unpack.parse_checksum(claims.get("checksum"))
    hasher = hashlib.new(expected[0] if expected else "sha256")
    paths = download.temp_paths(pool, name, work_dir)
    os.makedirs(paths["dir"], exist_ok=True)
    body = _Body(h.rfile, length, h.connection.gettimeout())
    last = [0.0]
    try:
        with open(paths["image"], "wb") as out:
            def consume(data):          # on the pipeline's thread: hashing and writing overlap receiving
                hasher.update(data)
                out.write(data)
            pipe = download.Pipeline(consume)

            def sink(data):
                rec["received"] += len(data)
                if limit is not None and rec["received"] > limit:
                    raise TooLarge(f"the file is larger than the limit of {limit} bytes ({claims.get('limit_setting')})")
                pipe.write(data)
                if time.monotonic() - last[0] > 1:
                    last[0] = time.monotonic()
                    _write(rec_path, rec)
            try:
                ctype = h.headers.get("Content-Type", "")
                m = re.search(r'boundary="?([^";]+)"?', ctype)
                if ctype.lower().startswith("multipart/form-data") and m:
                    if not _multipart(body, m.group(1).encode("latin-1"), sink):
                        raise InvalidArgument('the form has no file (send it as the form field "file")')
                else:
                    while data := body.read():
                        sink(data)
            finally:
                pipe.close()
        if expected and hasher.hexdigest() != expected[1]:
            raise InvalidArgument(f"checksum mismatch: expected {unpack.label(*expected)}, the uploaded file has "
                                  f"{unpack.label(expected[0], hasher.hexdigest())}")
        have = unpack.check_image(paths["image"], fmt)
        download.place(pool, name, paths, have["format"])
        if not paths["local"]:
            have = images.info(pool, name, have["format"])
    except BaseException:
        download.cleanup(pool, name, work_dir)
        raise
    return {"path": name, "format": have["format"], "image_format": fmt, "size": have["size"],
            "physical_size": have["physical_size"], "checksum": unpack.label(hasher.name, hasher.hexdigest()),
            "verified": expected is not None}
