"""HTTP(S) transfers for template downloads: the URL policy, one stream that resumes on the next mirror,
and a segmented fetch that spreads Range requests over several mirrors at once.

Every URL, including each redirect target and each metalink mirror, passes `Policy.check`: only http and
https; link-local addresses (169.254.0.0/16 with the cloud metadata service, fe80::/10) are always
refused; loopback, private and other non-global addresses only when they fall in `allowed_cidrs` (the
management server's choice, like CloudStack's secstorage.allowed.internal.downloadsites). Connections
go to the address that was checked, so a second DNS answer cannot slip another address in.
"""
import http.client
import ipaddress
import os
import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from volstack.agent.errors import InvalidArgument, Unavailable

NEVER = [ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10")]
PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
MAX_REDIRECTS = 5
BUF = 1 << 20
USER_AGENT = "volstack-agent"


class LocalError(Exception):
    """Writing on this host failed (disk full, I/O error): no other mirror can help, stop at once."""


class HttpError(Exception):
    pass


@dataclass
class Policy:
    allowed_cidrs: tuple = PRIVATE
    timeout: float = 60.0                 # seconds for connecting and for each read
    headers: dict = field(default_factory=dict)
    context: ssl.SSLContext | None = None

    def __post_init__(self):
        try:
            self._allowed = [ipaddress.ip_network(c, strict=False) for c in self.allowed_cidrs]
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"allowed_cidrs: {e}") from None
        for k, v in self.headers.items():
            if not isinstance(k, str) or not isinstance(v, str) or any(c in k + v for c in "\r\n"):
                raise InvalidArgument(f"invalid request header {k!r}")

    def check(self, url: str) -> tuple:
        """(scheme, host, port, path+query, address to connect to) of an allowed URL; InvalidArgument else."""
        if not isinstance(url, str) or not url:
            raise InvalidArgument(f"invalid URL {url!r}")
        u = urlsplit(url)
        scheme = u.scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidArgument(f"URL {url} is refused: scheme {scheme or '(none)'!r} is not allowed, "
                                  "only http and https")
        try:
            host, port = u.hostname, u.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise InvalidArgument(f"URL {url} has an invalid port") from None
        if not host:
            raise InvalidArgument(f"URL {url} has no host")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise Unavailable(f"cannot resolve the host of {url}: {e}") from None
        addresses = []
        for info in infos:
            ip = ipaddress.ip_address(info[4][0].split("%")[0])
            ip = getattr(ip, "ipv4_mapped", None) or ip
            if any(ip in n for n in NEVER):
                raise InvalidArgument(f"URL {url} is refused: {host} is the link-local address {ip} "
                                      "(169.254.0.0/16, fe80::/10: metadata services, never a download site)")
            if not ip.is_global and not any(ip.version == n.version and ip in n for n in self._allowed):
                raise InvalidArgument(f"URL {url} is refused: {host} is the internal address {ip}, which is not "
                                      "in the allowed internal networks "
                                      f"({', '.join(map(str, self._allowed)) or 'none'})")
            addresses.append(str(ip))
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        return scheme, host, port, path, addresses[0]


class _Conn(http.client.HTTPConnection):
    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _TlsConn(http.client.HTTPSConnection):
    def __init__(self, host, port, address, timeout, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class Session:
    """Requests to one mirror on one kept-alive connection, following (checked) redirects."""

    def __init__(self, url: str, policy: Policy):
        self.url, self.policy = url, policy
        self._conn, self._key = None, None
        self._checked: dict[str, tuple] = {}     # one policy check (DNS lookup) per URL per session

    def close(self):
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _connect(self, scheme, host, port, address):
        self.close()
        self._conn = (_TlsConn(host, port, address, self.policy.timeout,
                               self.policy.context or ssl.create_default_context())
                      if scheme == "https" else _Conn(host, port, address, self.policy.timeout))
        self._key = (scheme, host, port, address)

    def request(self, method: str, headers: dict | None = None) -> http.client.HTTPResponse:
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            if url not in self._checked:
                self._checked[url] = self.policy.check(url)
            scheme, host, port, path, address = self._checked[url]
            reused = self._conn is not None and self._key == (scheme, host, port, address)
            if not reused:
                self._connect(scheme, host, port, address)
            hdrs = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **self.policy.headers, **(headers or {})}
            try:
                self._conn.request(method, path, headers=hdrs)
                resp = self._conn.getresponse()
            except (OSError, http.client.HTTPException):
                if not reused:
                    self.close()
                    raise
                self._connect(scheme, host, port, address)   # the server closed a kept-alive connection
                self._conn.request(method, path, headers=hdrs)
                resp = self._conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                resp.read()
                url = urljoin(url, resp.getheader("Location"))
                self.url = url     # later requests (ranges) go straight to where the file is
                continue
            if resp.status >= 400:
                resp.read(65536)
                self.close()
                raise HttpError(f"HTTP {resp.status} {resp.reason}")
            return resp
        raise HttpError(f"more than {MAX_REDIRECTS} redirects")


def reason(e: Exception) -> str:
    if isinstance(e, (HttpError, InvalidArgument, Unavailable)):
        return str(e)
    if isinstance(e, http.client.IncompleteRead):
        return f"the connection ended after {len(e.partial)} more bytes, {e.expected} were still expected"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    return str(e) or type(e).__name__


def validators_of(resp, url: str) -> dict:
    size = None
    rng = resp.getheader("Content-Range")
    if rng and "/" in rng and rng.rsplit("/", 1)[1].strip().isdigit():
        size = int(rng.rsplit("/", 1)[1])
    elif resp.status == 200 and (resp.getheader("Content-Length") or "").isdigit():
        size = int(resp.getheader("Content-Length"))
    return {"url": url, "etag": resp.getheader("ETag"), "last_modified": resp.getheader("Last-Modified"),
            "size": size}


def probe(url: str, policy: Policy) -> dict:
    """What a mirror says about the file, from a one-byte Range request: validators plus `ranges`."""
    s = Session(url, policy)
    try:
        resp = s.request("GET", {"Range": "bytes=0-0"})
        v = validators_of(resp, url)
        v["ranges"] = resp.status == 206 and v["size"] is not None
        if resp.status == 206:
            resp.read()
        return v
    finally:
        s.close()


def head(url: str, policy: Policy) -> dict:
    s = Session(url, policy)
    try:
        try:
            resp = s.request("HEAD")
        except HttpError as e:
            if not str(e).startswith(("HTTP 405", "HTTP 501")):
                raise
            s.close()
            return probe(url, policy)
        resp.read()
        v = validators_of(resp, s.url)
        v["url"] = url
        return v
    finally:
        s.close()


def stream(urls: list, write, progress, policy: Policy, tries_per_mirror: int = 3, on_source=None) -> dict:
    """GET the file once, from the first mirror that serves it, feeding write(bytes) in order. A connection
    that breaks after some data resumes (Range) on the same mirror, then on the next one."""
    offset, total, first, errors, used, served = 0, None, None, [], [], {}
    buf = bytearray(BUF)
    for url in urls:
        session = Session(url, policy)
        tries = 0
        try:
            while tries < tries_per_mirror:
                tries += 1
                got = 0
                try:
                    resp = session.request("GET", {"Range": f"bytes={offset}-"} if offset else None)
                    v = validators_of(resp, session.url)
                    skip = 0
                    if offset and resp.status == 206:
                        start = (resp.getheader("Content-Range") or "").split(" ")[-1].split("-")[0]
                        if start != str(offset):
                            raise HttpError(f"asked for bytes from {offset}, got {resp.getheader('Content-Range')}")
                    elif offset:
                        skip = offset       # no Range support: read past what we already have
                    if first is None:
                        first = v
                    if v["size"] is not None:
                        if total is not None and v["size"] != total:
                            raise HttpError(f"the file is {v['size']} bytes here but {total} bytes on {used[0]}")
                        total = v["size"]
                    if url not in used:
                        used.append(url)
                    if on_source:
                        on_source(url)
                    while n := resp.readinto(buf):
                        data = memoryview(buf)[:n]
                        if skip:
                            cut = min(skip, n)
                            skip -= cut
                            data = data[cut:]
                        if data:
                            try:
                                write(data)
                            except OSError as e:
                                raise LocalError(str(e)) from e
                            offset += len(data)
                            got += len(data)
                            served[url] = served.get(url, 0) + len(data)
                            progress(offset, total)
                    if total is not None and offset < total:
                        raise HttpError(f"the body ended at byte {offset} of {total}")
                    return {"validators": first, "size": offset, "mirrors": served}
                except LocalError:
                    raise
                except (OSError, http.client.HTTPException, HttpError, InvalidArgument, Unavailable) as e:
                    session.close()
                    errors.append(f"{session.url}: {reason(e)}")
                    if not got and (isinstance(e, (HttpError, InvalidArgument, Unavailable, ConnectionRefusedError))
                                    or tries > 1):
                        break          # a definite no, or no progress twice: try the next mirror
        finally:
            session.close()
    raise Unavailable("could not download from any source: " + "; ".join(errors or ["no URL given"]))


class _Plan:
    """Byte ranges still to fetch, shared by the mirror workers."""

    def __init__(self, size: int, chunk: int):
        self.todo = deque((a, min(a + chunk, size)) for a in range(0, size, chunk))
        self.busy = 0
        self.done_bytes = 0
        self.cond = threading.Condition()
        self.failed: Exception | None = None
        self.errors: list[str] = []
        self.pieces: dict[int, int] = {}     # written ranges start -> end, for the in-order reader
        self.over = False


def segmented(urls: list, fd: int, size: int, progress, policy: Policy, chunk: int | None = None,
              failures_per_mirror: int = 2, ordered=None) -> dict:
    """Fetch [0, size) into fd with one worker per mirror, each taking the next chunk as it finishes one.
    A mirror that fails hands the rest of its chunk back; after `failures_per_mirror` failures it is dropped.
    ordered(start, end), if given, is called on its own thread for each written range in file order (as
    soon as everything before it is written), so the caller can hash while the download goes on."""
    if not chunk:   # a multiple of the mirror count, so equal mirrors finish together; at least 4 rounds
        rounds = max(4, -(-size // (len(urls) * (32 << 20))))
        chunk = max(1 << 20, -(-size // (len(urls) * rounds)))
    plan = _Plan(size, chunk)
    served = {u: 0 for u in urls}

    def worker(url):
        session, failures = Session(url, policy), 0
        buf = bytearray(BUF)
        try:
            while True:
                with plan.cond:
                    while not plan.todo and plan.busy and plan.failed is None:
                        plan.cond.wait()
                    if not plan.todo or plan.failed is not None:
                        plan.cond.notify_all()
                        return
                    a, b = plan.todo.popleft()
                    plan.busy += 1
                pos = a
                try:
                    resp = session.request("GET", {"Range": f"bytes={a}-{b - 1}"})
                    if resp.status != 206 or not (resp.getheader("Content-Range") or "").startswith(f"bytes {a}-"):
                        raise HttpError(f"answered {resp.status} {resp.getheader('Content-Range') or ''} to a "
                                        f"request for bytes {a}-{b - 1}")
                    while pos < b and (n := resp.readinto(memoryview(buf)[:min(BUF, b - pos)])):
                        try:
                            os.pwrite(fd, memoryview(buf)[:n], pos)
                        except OSError as e:
                            raise LocalError(str(e)) from e
                        pos += n
                        with plan.cond:
                            plan.done_bytes += n
                            served[url] += n
                            done = plan.done_bytes
                        progress(done, size)
                    if pos < b:
                        raise HttpError(f"the body ended at byte {pos}, {b - pos} bytes short")
                    with plan.cond:
                        plan.busy -= 1
                        plan.pieces[a] = b
                        plan.cond.notify_all()
                except LocalError as e:
                    with plan.cond:
                        plan.busy -= 1
                        plan.failed = e
                        plan.cond.notify_all()
                    return
                except (OSError, http.client.HTTPException, HttpError, InvalidArgument, Unavailable) as e:
                    session.close()
                    failures += 1
                    with plan.cond:
                        plan.todo.appendleft((pos, b))    # the rest of this chunk goes to whoever is free
                        if pos > a:
                            plan.pieces[a] = pos
                        plan.busy -= 1
                        plan.errors.append(f"{url}: {reason(e)}")
                        plan.cond.notify_all()
                    if failures >= failures_per_mirror:
                        return
        finally:
            session.close()
            with plan.cond:
                plan.cond.notify_all()

    def follow():
        front = 0
        while front < size:
            with plan.cond:
                while front not in plan.pieces and not plan.over and plan.failed is None:
                    plan.cond.wait()
                if front not in plan.pieces or plan.failed is not None:
                    return
                end = plan.pieces.pop(front)
            try:
                ordered(front, end)
            except BaseException as e:
                with plan.cond:
                    plan.failed = e if isinstance(e, LocalError) else LocalError(f"{type(e).__name__}: {e}")
                    plan.cond.notify_all()
                return
            front = end

    threads = [threading.Thread(target=worker, args=(u,), name="download-segment", daemon=True) for u in urls]
    reader = threading.Thread(target=follow, name="download-reader", daemon=True) if ordered else None
    for t in threads + ([reader] if reader else []):
        t.start()
    for t in threads:
        t.join()
    with plan.cond:
        plan.over = True
        plan.cond.notify_all()
    if reader:
        reader.join()
    if plan.failed is not None:
        raise plan.failed           # a LocalError (TooLarge stays one, for its caller)
    if plan.todo:
        missing = sum(b - a for a, b in plan.todo)
        raise Unavailable(f"every mirror failed with {missing} bytes still to fetch: " + "; ".join(plan.errors))
    return {"size": size, "mirrors": served, "errors": plan.errors}
