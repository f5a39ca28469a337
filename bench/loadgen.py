"""HTTP load generator: client processes x threads, one persistent (keep-alive) connection per thread.

The connection is a minimal HTTP/1.1 client on a raw socket (http.client's header parsing costs about
as much CPU as the do-nothing server itself, and the client shares the machine's 2 cores with it).

Every request is signed when it is sent (signatureVersion=3 with a microsecond `expires`), so no two
requests are the same. Runs outside the server's process so that it does not share the server's GIL.
"""
import json
import multiprocessing as mp
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, urlencode

from volstack.api.signing import sign

PATH = "/client/api"


@dataclass
class Target:
    host: str
    port: int
    key: str
    secret: str


def signed_path(params: dict, key: str, secret: str) -> str:
    expires = datetime.now(timezone.utc) + timedelta(minutes=10)
    p = dict(params, apiKey=key, response="json", signatureVersion="3",
             expires=expires.strftime("%Y-%m-%dT%H:%M:%S.%f+0000"))
    p["signature"] = sign(p, secret)
    return PATH + "?" + urlencode(p, quote_via=quote)


class Conn:
    """One keep-alive connection; responses must carry Content-Length (both servers here send it)."""
    _LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host, self.buf = f"{host}:{port}".encode(), b""

    def get(self, path: str) -> tuple[int, bytes]:
        self.sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + self.host + b"\r\n\r\n")
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._recv()
        head, self.buf = self.buf[:end + 2], self.buf[end + 4:]
        size = int(self._LENGTH.search(head).group(1))
        while len(self.buf) < size:
            self._recv()
        body, self.buf = self.buf[:size], self.buf[size:]
        return int(head[9:12]), body

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def close(self):
        self.sock.close()


def call(conn: Conn, t: Target, params: dict) -> tuple[int, bytes]:
    return conn.get(signed_path(params, t.key, t.secret))


def sign_cost_us(t: Target, params: dict, n: int = 5000) -> float:
    """Client-side cost of building and signing one request URL, in microseconds."""
    start = time.perf_counter()
    for _ in range(n):
        signed_path(params, t.key, t.secret)
    return (time.perf_counter() - start) / n * 1e6


# ---------------------------------------------------------------- one client process

def _rate_thread(t: Target, params, expect: bytes, go: threading.Event, ready: threading.Barrier, state, out: list):
    conn = Conn(t.host, t.port)
    for _ in range(20):                                   # warm-up, and check we get what we should
        status, body = call(conn, t, params)
        if status != 200 or expect not in body:
            raise RuntimeError(f"unexpected response {status}: {body[:200]!r}")
    ready.wait()
    go.wait()
    n = errors = 0
    while time.monotonic() < state["end"]:
        status, _ = call(conn, t, params)
        n += 1
        errors += status != 200
    conn.close()
    out.append((n, errors))


def _async_thread(t: Target, calls: list, go: threading.Event, ready: threading.Barrier, state, out: list):
    conn = Conn(t.host, t.port)
    ready.wait()
    go.wait()
    jobs, errors = [], 0
    for params in calls:
        status, body = call(conn, t, params)
        if status == 200:
            jobs.append(next(iter(json.loads(body).values()))["jobid"])
        else:
            errors += 1
    for jobid in jobs:                                    # poll each job until it is done
        for _ in range(6000):
            status, body = call(conn, t, {"command": "queryAsyncJobResult", "jobid": jobid})
            st = json.loads(body)["queryasyncjobresultresponse"].get("jobstatus", 2) if status == 200 else 2
            if st != 0:
                errors += st != 1
                break
            time.sleep(0.01)
        else:
            errors += 1
    conn.close()
    out.append((len(calls), errors))


def _process(mode, t: Target, threads: int, work, duration: float, barrier, results):
    go, ready, state, out = threading.Event(), threading.Barrier(threads + 1), {}, []
    if mode == "rate":
        params, expect = work
        args = [(t, params, expect, go, ready, state, out) for _ in range(threads)]
        fn = _rate_thread
    else:
        args = [(t, work[i::threads], go, ready, state, out) for i in range(threads)]
        fn = _async_thread

    def guarded(*a):
        try:
            fn(*a)
        except BaseException:
            ready.abort()
            raise

    ts = [threading.Thread(target=guarded, args=a, daemon=True) for a in args]
    for th in ts:
        th.start()
    try:
        ready.wait(timeout=60)
        barrier.wait(timeout=60)
    except threading.BrokenBarrierError:
        barrier.abort()                      # let the parent fail at once
        raise
    cpu0, wall0 = time.process_time(), time.monotonic()
    state["end"] = wall0 + duration
    go.set()
    for th in ts:
        th.join(timeout=duration + 120)
    results.put((sum(n for n, _ in out), sum(e for _, e in out), time.process_time() - cpu0,
                 time.monotonic() - wall0, len(out) == threads))


# ---------------------------------------------------------------- the parent side

@dataclass
class Result:
    requests: int
    errors: int
    seconds: float           # wall time of the slowest client process
    client_cpu: float        # CPU seconds used by all client processes together

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def client_us_per_req(self) -> float:
        return self.client_cpu / max(1, self.requests) * 1e6


def run(t: Target, *, mode: str = "rate", work, procs: int = 2, threads: int = 2, duration: float = 3.0) -> Result:
    """mode "rate": work = (params, expected bytes); every connection sends requests for `duration` s.
    mode "async": work = list of async-command params, spread over all connections; each connection
    sends its share, then polls queryAsyncJobResult for each job until it is done."""
    ctx = mp.get_context("spawn")            # the parent runs server threads: do not fork it
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_process, daemon=True,
                      args=(mode, t, threads, work if mode == "rate" else work[i::procs], duration, barrier, results))
          for i in range(procs)]
    rows = run_processes(ps, results, duration + 300)
    if not all(r[4] for r in rows):
        raise RuntimeError("a client thread failed (see its traceback above)")
    return Result(sum(r[0] for r in rows), sum(r[1] for r in rows), max(r[3] for r in rows), sum(r[2] for r in rows))


def run_processes(ps, results, timeout: float) -> list:
    """Start the client processes, collect one result row from each, and always reap them."""
    for p in ps:
        p.start()
    rows, deadline = [], time.monotonic() + timeout
    try:
        while len(rows) < len(ps):
            try:
                rows.append(results.get(timeout=0.5))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in ps) or time.monotonic() > deadline:
                    raise RuntimeError("a client process failed (see its traceback above)") from None
    finally:
        for p in ps:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    return rows
