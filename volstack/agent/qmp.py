"""A minimal synchronous QMP client (QEMU Machine Protocol over a unix socket).

One `Qmp` is one connection; the agent opens one per operation (QEMU serves one client per monitor
socket at a time) and polls state rather than waiting for events, so nothing is lost when the agent
restarts. Events that arrive meanwhile are kept in `events` for callers that want to look.
"""
import json
import select
import socket
import time


class QmpError(Exception):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error: dict):
        self.cls = error.get("class", "GenericError")
        self.desc = error.get("desc", "")
        super().__init__(f"{command}: {self.desc}")


class QmpGone(Exception):
    """The monitor cannot be reached or closed the connection (QEMU is not running)."""


class Qmp:
    def __init__(self, path: str, timeout: float = 30.0, connect_timeout: float = 5.0):
        self.timeout = timeout
        self.events: list[dict] = []
        self._buf = b""
        self._id = 0
        deadline = time.monotonic() + connect_timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                self.sock.close()
                if time.monotonic() >= deadline:
                    raise QmpGone(f"QMP socket {path}: {e.strerror}") from None
                time.sleep(0.02)
        try:
            self.greeting = self._read(connect_timeout)
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Qmp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise QmpGone(f"QEMU did not answer on its monitor within {timeout:.0f} s")
            try:
                data = self.sock.recv(65536)
            except OSError as e:
                raise QmpGone(f"QMP connection failed: {e}") from None
            if not data:
                raise QmpGone("QEMU closed its monitor connection")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, args: dict | None = None, timeout: float | None = None):
        """Run one command; returns its "return" value or raises QmpError / QmpGone."""
        self._id += 1
        msg = {"execute": command, "id": self._id}
        if args:
            msg["arguments"] = args
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise QmpGone(f"QMP connection failed: {e}") from None
        while True:
            reply = self._read(self.timeout if timeout is None else timeout)
            if "event" in reply:
                self.events.append(reply)
                del self.events[:-100]
                continue
            if reply.get("id") != self._id:
                continue
            if "error" in reply:
                raise QmpError(command, reply["error"])
            return reply.get("return")
