"""The agent's HTTP side: bearer-token auth, request-id idempotency and async tasks.

Protocol 1 (JSON bodies, `Authorization: Bearer <token>` on every request):

    GET  /v1/hello          {"protocol", "hostname", "hypervisor", "version", "capabilities"}
    POST /v1/command        {"id", "cmd", "args", "async"?, "task"?} -> {"ok": true, "result"}
                            or 4xx/5xx {"ok": false, "error", "kind"}
    GET  /v1/tasks/<id>     {"state": "running|done|failed", "progress", "result" | "error", "kind"}

An async command runs as a task whose id is "task" when the caller names it (a new one), else a fresh uuid.
`task_find` (command, match) tells the state of such a task without touching it. The `task_cancel` command (handled here, not by the Agent: tasks are the server's) stops a running task named
by `task` (its id) or by what it works on (`command` and `match`, e.g. {"dst_pool": pool uuid, "dst_name": name}
for a volume_copy: the latest such task): the task's subprocesses are killed, its partial output removed, and
it fails with "cancelled: <reason>". A task that has already ended is left as it is; the answer is the task's
state either way (`{"task", "state", ...}`, "state": "unknown" when there is no such task), so a caller learns
whether the work was completed (and can be adopted) or not.

Under /transfer/ (agent/transfer.py) a signed URL replaces the token: extract downloads, browser uploads.

The outcome of the last 1000 request ids is kept in `<state>/agent.db` (SQLite): a repeated id gets
the stored outcome and the work is not done again; a repeat that arrives while the first is still
running waits for it. Tasks are rows in the same database; at start-up a task left "running" by an
agent that died becomes "done" if its work is verifiably complete, else "failed: agent restarted"; what it left
under a temporary name (copies' `.part` files, reverts' `<name>.revert`, scratch files) is removed.
"""
import hmac
import sys
import json
import logging
import sqlite3
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from volstack import transfer_signing as signing
from volstack.agent import luks, tasks, transfer
from volstack.agent.args import arg
from volstack.agent.errors import AgentError, Failed, InvalidArgument, NotFound

log = logging.getLogger("volstack.agent")
KEEP = 1000
MAX_BODY = 1 << 20


class Store:
    def __init__(self, path: str):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS requests (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "id TEXT UNIQUE NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "id TEXT UNIQUE NOT NULL, cmd TEXT NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL, "
                             "progress INTEGER NOT NULL, result TEXT, error TEXT, kind TEXT, updated REAL)")

    def _one(self, sql: str, params=()):
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def _run(self, *statements):
        with self._lock:
            for sql, params in statements:
                self._db.execute(sql, params)

    def outcome(self, request_id: str) -> tuple[int, dict] | None:
        row = self._one("SELECT status, body FROM requests WHERE id = ?", (request_id,))
        return (row[0], json.loads(row[1])) if row else None

    def remember(self, request_id: str, status: int, body: dict) -> None:
        self._run(("INSERT OR REPLACE INTO requests (id, status, body) VALUES (?, ?, ?)",
                   (request_id, status, json.dumps(body))),
                  ("DELETE FROM requests WHERE seq <= (SELECT MAX(seq) FROM requests) - ?", (KEEP,)))

    def add_task(self, task_id: str, cmd: str, args: dict) -> None:
        self._run(("INSERT INTO tasks (id, cmd, args, state, progress, updated) VALUES (?, ?, ?, 'running', 0, ?)",
                   (task_id, cmd, json.dumps(luks.redact(args)), time.time())),
                  ("DELETE FROM tasks WHERE state != 'running' AND seq <= (SELECT MAX(seq) FROM tasks) - ?", (KEEP,)))

    def progress(self, task_id: str, percent: int) -> None:
        self._run(("UPDATE tasks SET progress = ?, updated = ? WHERE id = ? AND state = 'running'",
                   (percent, time.time(), task_id)))

    def finish(self, task_id: str, result: dict | None = None, error: AgentError | None = None) -> None:
        if error is None:
            self._run(("UPDATE tasks SET state = 'done', progress = 100, result = ?, updated = ? WHERE id = ?",
                       (json.dumps(result), time.time(), task_id)))
        else:
            self._run(("UPDATE tasks SET state = 'failed', error = ?, kind = ?, updated = ? WHERE id = ?",
                       (error.text, error.kind, time.time(), task_id)))

    def task(self, task_id: str) -> dict | None:
        row = self._one("SELECT state, progress, result, error, kind FROM tasks WHERE id = ?", (task_id,))
        if row is None:
            return None
        out = {"state": row[0], "progress": row[1]}
        if row[0] == "done":
            out["result"] = json.loads(row[2])
        elif row[0] == "failed":
            out.update({"error": row[3], "kind": row[4]})
        return out

    def find_task(self, cmd: str, match: dict) -> str | None:
        """The latest task of cmd whose arguments match (an object argument, e.g. a pool spec, by its uuid)."""
        with self._lock:
            rows = self._db.execute("SELECT id, args FROM tasks WHERE cmd = ? ORDER BY seq DESC", (cmd,)).fetchall()
        for task_id, raw in rows:
            args = json.loads(raw)
            if all((args.get(k) or {}).get("uuid") == v if isinstance(args.get(k), dict) else args.get(k) == v
                   for k, v in match.items()):
                return task_id
        return None

    def running_tasks(self) -> list[tuple[str, str, dict]]:
        with self._lock:
            rows = self._db.execute("SELECT id, cmd, args FROM tasks WHERE state = 'running'").fetchall()
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Handler(BaseHTTPRequestHandler):
    server_version = "volstack-agent"
    protocol_version = "HTTP/1.0"   # one request per connection: simple, and nothing is left unread

    def log_message(self, fmt, *args):   # the request line only; headers (the token) are never logged
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, e: AgentError) -> None:
        self._send(e.status, {"ok": False, "error": e.text, "kind": e.kind})

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        expected = f"Bearer {self.server.agent_server.token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return True
        self._send(401, {"ok": False, "error": "missing or wrong agent token (Authorization: Bearer <token>)",
                         "kind": "Unauthorized"})
        return False

    def _transfer(self, method: str) -> bool:
        if not self.path.startswith(signing.PREFIX):
            return False
        transfer.handle(self, method)
        return True

    def do_HEAD(self):
        if not self._transfer("HEAD"):
            self._fail(NotFound(f"no such endpoint HEAD {self.path}"))

    def do_OPTIONS(self):
        if not self._transfer("OPTIONS"):
            self._fail(NotFound(f"no such endpoint OPTIONS {self.path}"))

    def do_GET(self):
        if self._transfer("GET") or not self._authorized():
            return
        srv = self.server.agent_server
        if self.path == "/v1/hello":
            return self._send(200, srv.agent.hello())
        if self.path.startswith("/v1/tasks/"):
            task = srv.store.task(self.path[len("/v1/tasks/"):])
            if task is None:
                return self._fail(NotFound(f"no task {self.path[len('/v1/tasks/'):]} on this agent"))
            return self._send(200, task)
        self._fail(NotFound(f"no such endpoint {self.path} (protocol 1: /v1/hello, /v1/command, /v1/tasks/<id>)"))

    def do_POST(self):
        if self._transfer("POST") or not self._authorized():
            return
        if self.path != "/v1/command":
            return self._fail(NotFound(f"no such endpoint {self.path}"))
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise InvalidArgument(f"the request body must be JSON of 1 to {MAX_BODY} bytes")
            try:
                req = json.loads(self.rfile.read(length))
            except ValueError:
                raise InvalidArgument("the request body is not valid JSON") from None
            if not isinstance(req, dict):
                raise InvalidArgument("the request body must be a JSON object")
            rid, cmd, args = req.get("id"), req.get("cmd"), req.get("args") or {}
            if not isinstance(rid, str) or not 0 < len(rid) <= 100:
                raise InvalidArgument("id must be a request id string (a uuid)")
            if not isinstance(cmd, str) or not isinstance(args, dict):
                raise InvalidArgument("cmd must be a command name and args an object")
            task = req.get("task")
            if task is not None and (not isinstance(task, str) or not 0 < len(task) <= 100):
                raise InvalidArgument("task must be a task id string (a uuid)")
        except AgentError as e:
            return self._fail(e)
        self._send(*self.server.agent_server.execute(rid, cmd, args, bool(req.get("async") or args.get("async")),
                                                     task))


class _HttpServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A caller that went away before its answer (a management server killed mid-call) is not an error of the
        agent: one line, no traceback. The outcome is kept by request id, so a retry gets it."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            log.info("the caller at %s:%s went away before its answer: %s", *client_address[:2], exc)
            return
        log.exception("request from %s:%s failed", *client_address[:2])


class AgentServer:
    def __init__(self, agent, store: Store, token: str, host: str = "127.0.0.1", port: int = 0,
                 transfers: transfer.Slots | None = None):
        self.agent, self.store, self.token = agent, store, token
        self.transfers = transfers or transfer.Slots()
        self._inflight: dict[str, threading.Event] = {}
        self._controls: dict[str, tasks.Control] = {}      # running task id -> its control (task_cancel)
        self._guard = threading.Lock()
        self._recover()
        if hasattr(agent, "state_dir"):
            transfer.recover(agent)
        self._http = _HttpServer((host, port), _Handler)
        self._http.daemon_threads = True
        self._http.agent_server = self
        self._thread = None

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def start(self) -> "AgentServer":
        self._thread = threading.Thread(target=self._http.serve_forever, name="agent-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def _recover(self) -> None:
        if hasattr(self.agent, "clean_work_dirs"):
            self.agent.clean_work_dirs()
        for task_id, cmd, args in self.store.running_tasks():
            try:
                result = self.agent.recover(cmd, args)
            except Exception as e:
                log.warning("task %s (%s): checking its work after the restart failed: %s", task_id, cmd, e)
                result = None
            if result is not None:
                log.info("task %s (%s) had finished before the restart", task_id, cmd)
                self.store.finish(task_id, result)
            else:
                self.store.finish(task_id, error=Failed("agent restarted"))

    def execute(self, rid: str, cmd: str, args: dict, is_async: bool, task_id: str | None = None) -> tuple[int, dict]:
        while True:
            stored = self.store.outcome(rid)
            if stored is not None:
                return stored
            with self._guard:
                running = self._inflight.get(rid)
                if running is None:
                    self._inflight[rid] = threading.Event()
                    break
            running.wait()
        try:
            args = {k: v for k, v in args.items() if k != "async"}
            if is_async:
                with self._guard:
                    taken = task_id is not None and (task_id in self._controls or self.store.task(task_id))
                    if not taken:
                        task_id = task_id or str(uuid.uuid4())
                        self._controls[task_id] = tasks.Control()
                        self.store.add_task(task_id, cmd, args)
                if taken:
                    err = InvalidArgument(f"task {task_id} already exists on this agent: name a new task")
                    outcome = err.status, {"ok": False, "error": err.text, "kind": err.kind}
                else:
                    threading.Thread(target=self._task, args=(task_id, cmd, args), name=f"task-{cmd}",
                                     daemon=True).start()
                    outcome = 200, {"ok": True, "result": {"task": task_id}}
            else:
                outcome = self._run(cmd, args)
            self.store.remember(rid, *outcome)
            return outcome
        finally:
            with self._guard:
                self._inflight.pop(rid).set()

    def _run(self, cmd: str, args: dict, progress=None) -> tuple[int, dict]:
        started = time.monotonic()
        try:
            result = self.cancel(args) if cmd == "task_cancel" else self.find(args) if cmd == "task_find" else \
                self.agent.run(cmd, args, progress)
            log.info("%s ok (%.2f s)", cmd, time.monotonic() - started)
            return 200, {"ok": True, "result": result}
        except AgentError as e:
            log.info("%s failed: %s: %s", cmd, e.kind, e.text)
            return e.status, {"ok": False, "error": e.text, "kind": e.kind}
        except Exception as e:
            log.exception("%s failed unexpectedly", cmd)
            return 500, {"ok": False, "error": f"{cmd} failed on the agent: {type(e).__name__}: {e}", "kind": "Failed"}

    def _task(self, task_id: str, cmd: str, args: dict) -> None:
        last = [0]

        def progress(percent):
            percent = max(0, min(99, int(percent)))
            if percent != last[0]:
                last[0] = percent
                self.store.progress(task_id, percent)

        control = self._controls[task_id]
        try:
            with tasks.running(control):
                status, body = self._run(cmd, args, progress)
            if body["ok"]:              # done, even if a cancel came too late to stop it: the work is complete
                self.store.finish(task_id, body["result"])
            else:
                err = Failed(f"cancelled: {control.reason}" if control.reason else body["error"])
                err.kind = "Failed" if control.reason else body["kind"]
                self.store.finish(task_id, error=err)
        finally:
            with self._guard:
                self._controls.pop(task_id, None)
            control.ended.set()

    def find(self, args: dict) -> dict:
        """task_find: the state of the latest task of `command` whose arguments `match` (as task_cancel finds it),
        without touching it; "unknown" when there is none."""
        task_id = self.store.find_task(arg(args, "command"), arg(args, "match", dict))
        return {"task": task_id, **((self.store.task(task_id) if task_id else None) or {"state": "unknown"})}

    def cancel(self, args: dict) -> dict:
        reason = arg(args, "reason", str, "asked by the management server")
        task_id = arg(args, "task", str, None)
        if task_id is None:
            task_id = self.store.find_task(arg(args, "command"), arg(args, "match", dict))
            if task_id is None:
                return {"task": None, "state": "unknown"}
        with self._guard:
            control = self._controls.get(task_id)
        if control is not None:
            control.cancel(reason)
            # the task's thread removes its partial output before it ends; a task without a registered
            # subprocess cannot be stopped and is still "running" in the answer
            control.ended.wait(arg(args, "timeout", (int, float), 20))
        return {"task": task_id, **(self.store.task(task_id) or {"state": "unknown"})}
