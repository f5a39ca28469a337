"""Seen point 6 of issue 12: an agent that dies mid-answer is a transport failure (534 with the reason),
never an internal error (530) with a traceback."""
import socket
import threading

import pytest

from volstack import errors
from volstack.agent.client import AgentClient


class BrokenAgent:
    """Answers every request on 127.0.0.1 the way a dying agent would (mode), counting the requests."""

    def __init__(self, mode: str):
        self.mode, self.requests = mode, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next((l.split(b":")[1] for l in head.split(b"\r\n")
                                   if l.lower().startswith(b"content-length")), b"0"))
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests += 1
                if self.mode == "incomplete":      # promises 1000 bytes, sends 20, dies
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                                 b'{"ok": true, "resul')
                elif self.mode == "truncated":     # a well-framed but cut JSON body
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n" b'{"ok": true,')
                elif self.mode == "silent":        # closes without a status line
                    pass
                elif self.mode == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("mode", ["incomplete", "truncated", "silent", "reset"])
def test_an_agent_dying_mid_answer_is_534_with_the_reason(mode):
    agent = BrokenAgent(mode)
    try:
        client = AgentClient(agent.url, "token", timeout=5)
        with pytest.raises(errors.CloudError) as exc:
            client.call("vm_stop", name="x")
        assert exc.value.errorcode == 534, exc.value.text
        assert f"cannot reach the agent at {agent.url}" in exc.value.text
        assert "Traceback" not in exc.value.text
        if mode == "incomplete":
            assert "closed mid-answer" in exc.value.text
        assert agent.requests == 2        # retried once, with the same request id (the agent replays it)
        with pytest.raises(errors.ResourceUnavailable):
            client.wait_task("t1")        # task polls go through the same path
    finally:
        agent.close()


def test_a_caller_that_goes_away_is_no_traceback_in_the_agent_log(tmp_path):
    """A management server killed while the agent answers: the agent logs one line, not a traceback."""
    import json

    from tests.agentproc import AgentProcess, wait_until
    agent = AgentProcess(tmp_path / "state", "simulator").start()
    try:
        host, port = agent.url.removeprefix("http://").split(":")
        body = json.dumps({"id": "r1", "cmd": "vm_list", "args": {}}).encode()
        for _ in range(5):
            sk = socket.create_connection((host, int(port)))
            sk.sendall(b"POST /v1/command HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + agent.token.encode()
                       + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                       + b"\r\n\r\n" + body)
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sk.close()                                   # RST: the answer has nowhere to go
        log = tmp_path / "state-agent.log"
        wait_until("the agent to note a caller that went away",
                   lambda: any(w in log.read_text() for w in ("went away", "Traceback")), timeout=10)
    finally:
        agent.stop()
    assert "Traceback" not in log.read_text(), log.read_text()


def test_a_guest_that_is_gone_is_534_not_530(tmp_path):
    """Found by the fault workload: createSnapshot of a disk whose guest had died answered 530 ("VM … is not running
    on host …", an internal error): a host that does not run the guest is a 534 with that reason."""
    from tests.agentproc import AgentProcess
    pool = tmp_path / "pool"
    pool.mkdir()
    agent = AgentProcess(tmp_path / "state", "simulator").start()
    try:
        agent.client.call("vm_start", name="vm1", memory_mb=64, cpus=1, disks=[])
        agent.client.call("vm_stop", name="vm1", forced=True)
        with pytest.raises(errors.CloudError) as exc:
            agent.client.call("vm_reboot", name="vm1")
        assert exc.value.errorcode == 534 and "is not running on host" in exc.value.text, exc.value.text
    finally:
        agent.stop()
