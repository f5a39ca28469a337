"""A real HTTP/1.1 file server for download tests and benchmarks (threaded, 127.0.0.1, a free port).

    srv = FileServer().start()
    srv.add("/img.qcow2", data=b"...")             # or file="/path/on/disk"
    srv.url("/img.qcow2")                          # http://127.0.0.1:PORT/img.qcow2
    srv.add("/slow", file=p, rate=8 << 20)         # each connection paced to 8 MiB/s
    srv.add("/x", data=b"...", fail="404")         # also "reset" (RST after `after` body bytes), "cut" (FIN
                                                   # after `after` bytes: a short body), "corrupt" (flipped bytes)
    srv.add("/y", data=b"...", ranges=False)       # ignores Range, always answers 200 with everything
    srv.requests                                   # [(method, path, Range header or None, status)]
    FileServer(tls=(certfile, keyfile))            # HTTPS instead (srv.url gives https://...)
    srv.stop()

Range (`bytes=a-b`, `a-`, `-n`; one range), HEAD, ETag and Last-Modified are served for every file; a
`fail` may be limited to the first `times` requests. Pacing is by time (a rate limit, not a synchronisation).
"""
import email.utils
import hashlib
import os
import re
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 256 << 10


@dataclass
class Entry:
    data: bytes | None = None
    file: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    rate: int | None = None          # bytes/s per connection
    fail: str | None = None          # "404", "reset", "cut", "corrupt"
    after: int = 0                   # "reset": body bytes sent before the connection is reset
    times: int | None = None         # how many requests fail (None: all)
    ranges: bool = True

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(self.file)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "volstack-test-http"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        srv = self.server.owner
        path = self.path.split("?")[0]
        entry = srv.files.get(path)
        rng = self.headers.get("Range")
        failing = entry is not None and entry.fail and srv._take_failure(path, entry)
        if entry is None or (failing and entry.fail == "404"):
            srv._log(self.command, path, rng, 404)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size, start, end, status = entry.size, 0, entry.size, 200
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng or "") if entry.ranges else None
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            else:
                start = max(0, size - int(m.group(2)))
            if start >= size or start >= end:
                srv._log(self.command, path, rng, 416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        srv._log(self.command, path, rng, status)
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", entry.etag)
        self.send_header("Last-Modified", entry.last_modified)
        if entry.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if body:
            self._body(entry, start, end, failing)

    def _body(self, entry: Entry, start: int, end: int, failing: bool):
        limit = end if not (failing and entry.fail in ("reset", "cut")) else min(end, start + entry.after)
        fd = os.open(entry.file, os.O_RDONLY) if entry.data is None else None
        try:
            pos = start
            while pos < limit:
                n = min(CHUNK, limit - pos)
                if entry.rate:        # pacing per connection (kept across keep-alive requests), no saved-up burst
                    now = time.monotonic()
                    ready = getattr(self, "_ready", 0.0)
                    if ready > now:
                        time.sleep(ready - now)
                    self._ready = max(ready, now) + n / entry.rate
                if fd is not None and not (failing and entry.fail == "corrupt") and not self.server.owner.tls:
                    n = os.sendfile(self.connection.fileno(), fd, pos, n)
                else:
                    chunk = entry.data[pos:pos + n] if fd is None else os.pread(fd, n, pos)
                    if failing and entry.fail == "corrupt":
                        chunk = bytearray(chunk)
                        for i in range((7 - pos) % 512, len(chunk), 512):
                            chunk[i] ^= 0x5A
                    self.wfile.write(chunk)
                pos += n
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        finally:
            if fd is not None:
                os.close(fd)
        if limit < end and entry.fail == "reset":     # an abrupt end: RST instead of FIN, like a crashed server
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if limit < end:
            self.close_connection = True


class FileServer:
    def __init__(self, host: str = "127.0.0.1", tls: tuple | None = None):
        self.tls = tls
        self.files: dict[str, Entry] = {}
        self.requests: list[tuple] = []
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._http = ThreadingHTTPServer((host, 0), _Handler)
        self._http.daemon_threads = True
        self._http.owner = self
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self._http.socket = ctx.wrap_socket(self._http.socket, server_side=True)
        self._thread = None

    @property
    def port(self) -> int:
        return self._http.server_address[1]

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes | None = None, file: str | None = None, **kw) -> str:
        e = Entry(data=data, file=str(file) if file else None, **kw)
        mtime = time.time() if file is None else os.path.getmtime(file)
        if e.etag is None:
            tag = hashlib.sha1(data).hexdigest()[:16] if data is not None else f"{e.size:x}-{int(mtime * 1e6):x}"
            e.etag = f'"{tag}"'
        e.last_modified = e.last_modified or email.utils.formatdate(int(mtime), usegmt=True)
        with self._lock:
            self.files[path] = e
            self._failures.pop(path, None)
        return self.url(path)

    def _take_failure(self, path: str, entry: Entry) -> bool:
        with self._lock:
            n = self._failures.get(path, 0)
            if entry.times is not None and n >= entry.times:
                return False
            self._failures[path] = n + 1
            return True

    def _log(self, method, path, rng, status):
        with self._lock:
            self.requests.append((method, path, rng, status))

    def start(self) -> "FileServer":
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), name="test-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def closed_port_url(path: str = "/gone") -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused): a dead mirror."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}{path}"
