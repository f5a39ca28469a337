"""The management server's side of the agent protocol (see server.py for the protocol itself).

    agent = AgentClient("http://127.0.0.1:8250", token, timeout=60)
    agent.hello()
    agent.call("volume_create", pool=pool, name=uuid, size=1 << 30, format="qcow2", provisioning="thin")
    task = agent.call_async("volume_copy", src_pool=a, src_name=x, dst_pool=b, dst_name=y, format="qcow2")
    agent.wait_task(task, progress_cb=lambda percent: ...)

Failures arrive as volstack.errors exceptions: NotFound (431) and InvalidParameter (431) for bad
arguments, ResourceInUse (536) when something is busy, ResourceUnavailable (534) when the agent or
something it needs (an NFS server, a pool path) cannot be reached, InternalError (530) otherwise.
"""
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
import uuid

from volstack import errors

KINDS = {"NotFound": errors.NotFound, "InvalidArgument": errors.InvalidParameter, "Busy": errors.ResourceInUse,
         "Unavailable": errors.ResourceUnavailable, "Failed": errors.InternalError}


class AgentClient:
    def __init__(self, url: str, token: str, timeout: float = 60.0, stall_timeout: float = 300.0,
                 poll_interval: float = 0.2):
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self.poll_interval = poll_interval

    def __repr__(self) -> str:   # never shows the token
        return f"AgentClient({self.url!r})"

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self._token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                reply = json.loads(e.read())
            except ValueError:
                reply = {}
            if e.code == 401:
                raise errors.ResourceUnavailable(f"the agent at {self.url} refused our credential: the host's "
                                                 "agent token does not match") from None
            text = reply.get("error") or f"the agent at {self.url} answered HTTP {e.code}"
            raise KINDS.get(reply.get("kind"), errors.InternalError)(text) from None

    def _send(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        """One request, retried once (same body, so the same request id) if the connection failed."""
        for attempt in (1, 2):
            try:
                return self._request(method, path, body, timeout)
            except (OSError, http.client.HTTPException, ValueError) as e:
                # URLError, resets and timeouts are OSErrors; an agent that dies mid-answer gives an
                # IncompleteRead (HTTPException) or a truncated JSON body (ValueError): all are transport
                # failures, answered 534 with the reason, never a 530 with a traceback
                if isinstance(e, urllib.error.HTTPError):
                    raise
                if attempt == 2:
                    raise errors.ResourceUnavailable(f"cannot reach the agent at {self.url}: {_reason(e)}") from None
        raise AssertionError("unreachable")

    def hello(self) -> dict:
        return self._send("GET", "/v1/hello")

    def call(self, cmd: str, _timeout: float | None = None, **args) -> dict:
        """Run a command and return its result (waits for it, up to `timeout` seconds per attempt)."""
        reply = self._send("POST", "/v1/command", {"id": str(uuid.uuid4()), "cmd": cmd, "args": args}, _timeout)
        return reply["result"]

    def call_async(self, cmd: str, _task: str | None = None, **args) -> str:
        """Start a command as a task on the agent; returns the task id for wait_task / task. _task: the id to
        give the task (the caller records it first, so it can cancel the task without having heard back)."""
        reply = self._send("POST", "/v1/command", {"id": str(uuid.uuid4()), "cmd": cmd, "args": args,
                                                   "async": True, **({"task": _task} if _task else {})})
        return reply["result"]["task"]

    def task(self, task_id: str) -> dict:
        return self._send("GET", f"/v1/tasks/{task_id}")

    def wait_task(self, task_id: str, progress_cb=None, stall_timeout: float | None = None) -> dict:
        """Poll a task until it ends and return its result. There is no limit on the total time, only on
        how long the progress may stand still (stall_timeout, default self.stall_timeout)."""
        stall = self.stall_timeout if stall_timeout is None else stall_timeout
        last, moved = None, time.monotonic()
        while True:
            state = self.task(task_id)
            if state["state"] == "done":
                if progress_cb and last != 100:
                    progress_cb(100)
                return state.get("result") or {}
            if state["state"] == "failed":
                raise KINDS.get(state.get("kind"), errors.InternalError)(state.get("error") or "the task failed")
            if state["progress"] != last:
                last, moved = state["progress"], time.monotonic()
                if progress_cb:
                    progress_cb(last)
            elif time.monotonic() - moved > stall:
                raise errors.ResourceUnavailable(f"task {task_id} on the agent at {self.url} made no progress for "
                                                 f"{stall:.0f} s (stuck at {last}%)")
            time.sleep(self.poll_interval)


def _reason(e: Exception) -> str:
    if isinstance(e, http.client.IncompleteRead):
        return f"the connection closed mid-answer ({len(e.partial)} bytes received, {e.expected} more expected)"
    if isinstance(e, http.client.RemoteDisconnected) or isinstance(e, http.client.BadStatusLine):
        return f"the connection closed without an answer ({type(e).__name__})"
    if isinstance(e, ValueError):
        return f"the answer was cut short or is not JSON ({e})"
    return str(getattr(e, "reason", None) or e) or type(e).__name__
