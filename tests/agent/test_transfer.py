"""The agent's transfer helpers on their own: the streaming multipart reader and Range parsing."""
import io

import pytest

from volstack import transfer_signing as signing
from volstack.agent import transfer


def form(boundary, parts):
    out = b""
    for name, filename, data in parts:
        fn = f'; filename="{filename}"' if filename else ""
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{fn}\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_multipart_file_part_is_streamed_exactly_whatever_the_chunking(monkeypatch, chunk):
    monkeypatch.setattr(transfer, "CHUNK", chunk)
    boundary = "----WebKitFormBoundaryAbc123"
    tricky = b"\r\n--" + b"----WebKitFormBoundaryAbc12" + b"\r\n--x" + bytes(range(256)) * 3 + b"\r\n"
    body = form(boundary, [("name", None, b"disk"), ("file", "disk.qcow2", tricky), ("after", None, b"z" * 50)])
    got = bytearray()
    found = transfer._multipart(transfer._Body(io.BytesIO(body), len(body)), boundary.encode(), got.extend)
    assert found and bytes(got) == tricky


def test_a_form_without_a_file_or_cut_short_is_refused():
    body = form("b", [("name", None, b"x")])
    assert transfer._multipart(transfer._Body(io.BytesIO(body), len(body)), b"b", lambda d: None) is False
    body = form("b", [("file", "f", b"y" * 100)])[:-30]
    with pytest.raises(transfer.Interrupted):
        transfer._multipart(transfer._Body(io.BytesIO(body), len(body) + 30), b"b", lambda d: None)


@pytest.mark.parametrize("header,want", [(None, None), ("bytes=0-", (0, 99)), ("bytes=10-19", (10, 19)),
                                         ("bytes=-5", (95, 99)), ("bytes=90-500", (90, 99)),
                                         ("bytes=1-2,5-6", None), ("items=1-2", None)])
def test_ranges(header, want):
    assert transfer._range(header, 100) == want


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=50-10", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(ValueError):
        transfer._range(header, 100)


def test_signatures_bind_path_expiry_and_host_key():
    url, expires = signing.download_url("http://h:1", "token-a", {"name": "x"}, "x.qcow2", 60)
    path, query = url[len("http://h:1"):].split("?")
    metadata = path.split("/")[3]
    sig = query.split("signature=")[1]
    assert signing.verify("token-a", metadata, path, expires, sig)["name"] == "x"
    for args in (("token-b", metadata, path, expires, sig), ("token-a", metadata, path + "y", expires, sig),
                 ("token-a", metadata, path, signing.expiry(3600), sig), ("token-a", metadata, path, expires, "")):
        with pytest.raises(signing.Refused):
            signing.verify(*args)
    with pytest.raises(signing.Refused, match="expired"):
        past = signing.expiry(-1)
        signing.verify("token-a", metadata, path, past, signing.sign("token-a", metadata, path, past))


def test_an_upload_cut_short_by_an_agent_restart_fails_with_the_reason_and_leaves_no_file(tmp_path):
    import json
    import time

    from agentproc import AgentProcess
    store = tmp_path / "store"
    store.mkdir()
    (store / ".vol.qcow2.part").write_bytes(b"QFI\xfb partial")
    (tmp_path / "agent" / "uploads").mkdir(parents=True)
    (tmp_path / "agent" / "uploads" / "abc-1.json").write_text(json.dumps({
        "id": "abc-1", "state": "in_progress", "received": 10, "total": 100, "name": "vol.qcow2",
        "pool": {"uuid": "s1", "type": "Filesystem", "path": str(store)}, "expires_at": time.time() + 600}))
    agent = AgentProcess(tmp_path / "agent", hypervisor="simulator").start()
    try:
        st = agent.client.call("upload_status", id="abc-1")
        assert st["state"] == "failed" and "restarted" in st["error"]
        assert sorted(p.name for p in store.iterdir()) == []
        assert agent.client.call("upload_status", id="never")["state"] == "none"
    finally:
        agent.stop()


def test_signing_and_sealing_use_separate_keys():
    """One key for the HMAC, another for Fernet (v1 used one derived key for both)."""
    import base64
    import hmac

    from cryptography.fernet import Fernet, InvalidToken
    sign_key, seal_key = signing._key("token-a", signing.SIGN_LABEL), signing._key("token-a", signing.SEAL_LABEL)
    assert sign_key != seal_key
    url, expires = signing.download_url("http://h:1", "token-a", {"name": "x"}, "x.qcow2", 60)
    path = url[len("http://h:1"):].split("?")[0]
    metadata = path.split("/")[3]
    with pytest.raises(InvalidToken):                       # the signing key does not open the metadata
        Fernet(base64.urlsafe_b64encode(sign_key)).decrypt(metadata.encode())
    assert Fernet(base64.urlsafe_b64encode(seal_key)).decrypt(metadata.encode())
    by_seal_key = hmac.new(seal_key, (metadata + path + expires).encode(), "sha256").hexdigest()
    assert by_seal_key != url.split("signature=")[1]        # nor does the sealing key sign


def test_a_download_whose_client_stops_reading_ends_and_frees_its_slot_and_its_hold(make_agent, tmp_path):
    """--transfer-timeout ends a transfer whose client takes nothing; --max-transfers refuses more with a 503."""
    import socket
    from urllib.parse import urlsplit

    import requests

    from agentproc import wait_until
    from volstack.errors import CloudError
    store = tmp_path / "store"
    store.mkdir()
    with open(store / "big.raw", "wb") as f:
        f.truncate(256 << 20)           # sparse; far more than the socket buffers hold
    agent = make_agent("simulator", args=("--max-transfers", "1", "--transfer-timeout", "5"))
    pool = {"uuid": "s1", "type": "Filesystem", "path": str(store)}
    url, _ = signing.download_url(agent.url, agent.token, {"pool": pool, "name": "big.raw"}, "big.raw", 600)
    where = urlsplit(url)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stalled.connect((where.hostname, where.port))
        stalled.sendall(f"GET {where.path}?{where.query} HTTP/1.0\r\n\r\n".encode())
        assert stalled.recv(12) == b"HTTP/1.0 200"              # under way; from now on nobody reads
        busy = requests.get(url, stream=True, timeout=30)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "60"
        assert "--max-transfers" in busy.json()["error"]
        with pytest.raises(CloudError, match="being downloaded"):      # the download's shared hold
            agent.client.call("volume_delete", pool=pool, name="big.raw")
        wait_until("the stalled download to time out",
                   lambda: requests.head(url, timeout=30).status_code == 200, timeout=60, interval=0.2)
        agent.client.call("volume_delete", pool=pool, name="big.raw")      # the hold is gone too
        assert not (store / "big.raw").exists()
    finally:
        stalled.close()

    # an upload whose client stops sending fails with that reason and gives its slot back
    params = signing.upload_params(agent.url, agent.token, {"pool": pool, "name": "up.raw", "format": "RAW",
                                                            "checksum": None, "max_size": None}, "up-1", 600)
    with socket.create_connection((where.hostname, where.port)) as silent:
        silent.sendall((f"POST {urlsplit(params['postURL']).path} HTTP/1.0\r\nContent-Length: 1000000\r\n"
                        f"X-signature: {params['signature']}\r\nX-metadata: {params['metadata']}\r\n"
                        f"X-expires: {params['expires']}\r\n\r\n").encode() + b"\0" * 1000)
        wait_until("the upload to be under way", lambda: agent.client.call("upload_status", id="up-1")["state"]
                   == "in_progress")
        st = wait_until("the silent upload to fail", lambda: (lambda s: s["state"] == "failed" and s)(
            agent.client.call("upload_status", id="up-1")), timeout=60, interval=0.2)
        assert "nothing arrived for 5.0 s" in st["error"]
    assert requests.head(url, timeout=30).status_code != 503
    assert sorted(p.name for p in store.iterdir()) == []                  # no partial file


def test_upload_records_are_pruned_before_each_upload_but_never_a_done_one_not_yet_collected(make_agent, tmp_path):
    import json
    import time

    import requests
    store = tmp_path / "store"
    store.mkdir()
    pool = {"uuid": "s1", "type": "Filesystem", "path": str(store)}
    agent = make_agent("simulator")
    records, now = tmp_path / "state-host1" / "uploads", time.time()
    records.mkdir(parents=True, exist_ok=True)

    def record(oid, state, expires_at, **more):
        (records / f"{oid}.json").write_text(json.dumps({"id": oid, "state": state, "pool": pool, "name": oid,
                                                         "expires_at": expires_at, **more}))
    record("collected-expired", "done", now - 60, collected=now - 30)
    record("collected-valid", "done", now + 600, collected=now)          # still refuses a second POST
    record("done-not-collected", "done", now - 30 * 86400)               # the management server must learn it
    record("failed-long-ago", "failed", now - 8 * 86400)
    record("failed-lately", "failed", now - 86400)
    record("in-progress", "in_progress", now - 30 * 86400)               # a live upload is never touched

    params = signing.upload_params(agent.url, agent.token, {"pool": pool, "name": "new.raw", "format": "RAW",
                                                            "checksum": None, "max_size": None}, "new-1", 600)
    r = requests.post(params["postURL"], data=b"\0" * 65536, timeout=30, headers={
        "X-signature": params["signature"], "X-metadata": params["metadata"], "X-expires": params["expires"]})
    assert r.status_code == 200, r.text
    assert sorted(p.stem for p in records.glob("*.json")) == [
        "collected-valid", "done-not-collected", "failed-lately", "in-progress", "new-1"]
    assert agent.client.call("upload_status", id="done-not-collected")["state"] == "done"

    assert agent.client.call("upload_collected", id="new-1") == {"collected": True, "state": "done"}
    assert agent.client.call("upload_status", id="new-1")["collected"]
    assert agent.client.call("upload_collected", id="in-progress")["collected"] is False
    assert agent.client.call("upload_collected", id="never") == {"collected": False, "state": "none"}
    agent.restart()                                                      # start-up prunes by the same rules
    assert agent.client.call("upload_status", id="done-not-collected")["state"] == "done"
