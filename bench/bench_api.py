"""Figure 1 (signed listZones vs a do-nothing WSGI app on the same stack) and the async API rate."""
import cProfile
import pstats
import threading
import time
from urllib.parse import parse_qsl, urlsplit

import waitress
from waitress import wasyncore
from cs import CloudStack

import loadgen
from sqlmeter import SqlMeter
from volstack.management import ManagementServer

LIST_ZONES = {"command": "listZones"}


class DoNothingServer:
    """A fixed response to every request, served as ManagementServer.start() serves the API: waitress
    with the same settings and thread count, run and stopped the same way."""

    def __init__(self, body: bytes, content_type: str, threads: int):
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]

        def app(environ, start_response):
            start_response("200 OK", headers)
            return [body]

        self.http = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads, ident="volstack",
                                           channel_timeout=300, asyncore_loop_timeout=1)   # as the server (an int: 0.2 was 0, a spinning select)
        self.port = self.http.effective_port
        self.thread = threading.Thread(target=self._serve, name="do-nothing-http", daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self.http.run()
        except OSError:
            pass   # closed by stop()

    def stop(self):
        self.http.task_dispatcher.shutdown(timeout=10)
        wasyncore.close_all(self.http._map)
        self.thread.join(timeout=10)


class ApiBench:
    def __init__(self, tmp, threads: int = 8):
        self.ms = ManagementServer(f"sqlite:///{tmp / 'api.db'}", tmp / "volstack.key", port=0, threads=threads,
                                   heartbeat_seconds=5.0).start()
        self.dummy = None
        try:
            self._setup(threads)
        except BaseException:
            self.stop()
            raise

    def _setup(self, threads: int):
        self.cs = CloudStack(endpoint=self.ms.endpoint, key=self.ms.admin.api_key, secret=self.ms.admin_secret,
                             poll_interval=0.05)
        self.cs.createZone(name="bench-zone", networktype="Advanced")
        self.target = loadgen.Target("127.0.0.1", self.ms.port, self.ms.admin.api_key, self.ms.admin_secret)
        conn = loadgen.Conn("127.0.0.1", self.ms.port)
        status, self.zones_body = loadgen.call(conn, self.target, LIST_ZONES)
        conn.close()
        assert status == 200 and b'"count":1' in self.zones_body, self.zones_body
        self.dummy = DoNothingServer(self.zones_body, self.ms.json_content_type, threads)
        self.dummy_target = loadgen.Target("127.0.0.1", self.dummy.port, self.target.key, self.target.secret)

    def stop(self):
        if self.dummy is not None:
            self.dummy.stop()
        self.ms.stop()

    def round_trips(self, *, rounds: int, duration: float, procs: int, threads: int):
        """Alternates volstack and do-nothing runs; returns the best run of each."""
        best = {}
        for _ in range(rounds):
            for name, t in (("volstack", self.target), ("do-nothing", self.dummy_target)):
                r = loadgen.run(t, work=(LIST_ZONES, b"listzonesresponse"), procs=procs, threads=threads,
                                duration=duration)
                if r.errors:
                    raise RuntimeError(f"{name}: {r.errors} failed requests")
                if name not in best or r.rate > best[name].rate:
                    best[name] = r
        return best["volstack"], best["do-nothing"]

    def in_process(self, n: int, profile: bool = False) -> dict:
        """ApiApp.handle() called directly from one thread (no HTTP, no client): per-request costs.
        profile: afterwards, run the same requests again under cProfile and print the top functions."""
        queries = [parse_qsl(urlsplit(loadgen.signed_path(LIST_ZONES, self.target.key, self.target.secret)).query,
                             keep_blank_values=True) for _ in range(n)]

        def handle_all():
            for pairs in queries:
                status, _, _ = self.ms.api.handle(pairs, {}, "GET")
                assert status == "200 OK", status

        with SqlMeter(self.ms.db.engine, this_thread_only=True) as sql:
            start = time.perf_counter()
            handle_all()
            seconds = time.perf_counter() - start
        if profile:
            prof = cProfile.Profile()
            prof.runcall(handle_all)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return {"us": seconds / n * 1e6, "statements": sql.statements / n, "driver_us": sql.seconds / n * 1e6}

    def async_jobs(self, n: int, *, accounts: int = 8, procs: int = 2, threads: int = 2):
        """n disableAccount calls over `accounts` accounts, then polling until every job is done."""
        ids = [self.cs.createAccount(username=f"bench{i}", password="bench-Passw0rd", email="b@example.com",
                                     firstname="b", lastname="b", accounttype=0)["account"]["id"]
               for i in range(accounts)]
        work = [{"command": "disableAccount", "id": ids[i % accounts], "lock": "false"} for i in range(n)]
        return loadgen.run(self.target, mode="async", work=work, procs=procs, threads=threads)
