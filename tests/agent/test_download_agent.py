"""template_download and template_check_source through a real agent process (tests/agentproc.py), from a
real local HTTP server; the NFS pool target on the machine's nfs-ganesha (slow)."""
import hashlib
import os
import subprocess

import pytest

from volstack import errors

from agentproc import wait_until
from httpserver import FileServer

MiB = 1 << 20
OPTS = {"allowed_cidrs": ["127.0.0.0/8"]}


@pytest.fixture
def http():
    with FileServer() as srv:
        yield srv


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def packed_qcow2(tmp_path, mib=4) -> tuple[bytes, bytes]:
    """(qcow2 image, the same bzip2-compressed), as seed 002 registers a .qcow2.bz2."""
    raw, img = tmp_path / "src.raw", tmp_path / "src.qcow2"
    raw.write_bytes(os.urandom(mib * MiB))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(img)], check=True)
    subprocess.run(["bzip2", "-k", "-f", str(img)], check=True)
    return img.read_bytes(), (tmp_path / "src.qcow2.bz2").read_bytes()


def test_template_download_command(sim_agent, pool, http, tmp_path):
    image, packed = packed_qcow2(tmp_path)
    url = http.add("/t/tiny.qcow2.bz2", data=packed)
    c = sim_agent.client
    args = dict(pool=pool, name="tmpl-1", format="QCOW2", urls=[url], checksum="{SHA-256}" + sha256(packed),
                options=OPTS)
    seen = []
    r = c.wait_task(c.call_async("template_download", **args), progress_cb=seen.append)
    assert seen[-1] == 100
    assert {k: r[k] for k in ("path", "format", "image_format", "size", "compression", "verified", "reused")} == {
        "path": "tmpl-1", "format": "qcow2", "image_format": "QCOW2", "size": 4 * MiB, "compression": "bz2",
        "verified": True, "reused": False}
    assert r["checksum"] == "{SHA-256}" + sha256(packed) and r["validators"]["size"] == len(packed)
    assert open(os.path.join(pool["path"], "tmpl-1"), "rb").read() == image
    assert os.listdir(pool["path"]) == ["tmpl-1"]

    again = c.call("template_download", **args)                       # idempotent: the same result
    assert again == dict(r, reused=True) and len([q for q in http.requests if q[0] == "GET"]) == 1
    fresh = c.call("template_download", **args, validators=r["validators"])
    assert fresh["changed"] is False and fresh["change_reason"] == "unchanged"

    with pytest.raises(errors.InvalidParameter, match="tmpl-1 already exists in pool pool-1 and is not the result "
                                                      "of this download"):
        c.call("template_download", **dict(args, checksum="{MD5}" + hashlib.md5(packed).hexdigest()))

    check = c.call("template_check_source", urls=[url], validators=r["validators"], options=OPTS)
    assert check["changed"] is False and check["validators"]["etag"] == r["validators"]["etag"]
    http.add("/t/tiny.qcow2.bz2", data=packed + b"\0" * 10)
    check = c.call("template_check_source", urls=[url], validators=r["validators"], options=OPTS)
    assert check["changed"] is True and "changed from" in check["reason"]


def test_template_download_command_failures_leave_nothing(sim_agent, pool, http, tmp_path):
    c = sim_agent.client
    raw = os.urandom(MiB)
    with pytest.raises(errors.InvalidParameter, match="registered as QCOW2 but it is raw data"):
        c.wait_task(c.call_async("template_download", pool=pool, name="t2", format="QCOW2",
                                 urls=[http.add("/raw.img", data=raw)], options=OPTS))
    with pytest.raises(errors.InvalidParameter, match="checksum mismatch: expected \\{MD5\\}0{32} after 3 attempts"):
        c.call("template_download", pool=pool, name="t2", format="RAW", urls=[http.url("/raw.img")],
               checksum="0" * 32, options=OPTS)
    with pytest.raises(errors.InvalidParameter, match="169.254.169.254 is the link-local address"):
        c.call("template_download", pool=pool, name="t2", format="RAW", urls=["http://169.254.169.254/x"])
    with pytest.raises(errors.InvalidParameter, match="scheme 'file' is not allowed"):
        c.call("template_download", pool=pool, name="t2", format="RAW", urls=["file:///etc/passwd"])
    with pytest.raises(errors.ResourceUnavailable, match="HTTP 404"):
        c.call("template_download", pool=pool, name="t2", format="RAW", urls=[http.url("/none")], options=OPTS)
    assert os.listdir(pool["path"]) == []
    state = sim_agent.state_dir / "downloads"
    assert not state.exists() or os.listdir(state) == []              # no records or temp files either


def test_interrupted_download_is_cleaned_up_at_restart(make_agent, pool, http):
    agent = make_agent("simulator")
    data = os.urandom(24 * MiB)
    url = http.add("/slow.raw", data=data, rate=4 * MiB)     # about 6 s: time to kill the agent half way
    task = agent.client.call_async("template_download", pool=pool, name="t3", format="RAW", urls=[url],
                                   checksum=sha256(data), options=OPTS)
    wait_until("the download to be under way", lambda: agent.client.task(task)["progress"] >= 10)
    assert os.listdir(pool["path"]) == [".t3.part"]                   # being written, never under the final name
    agent.restart()                                                   # SIGKILL, then start on the same state dir
    state = agent.client.task(task)
    assert state["state"] == "failed" and state["error"] == "agent restarted"
    assert os.listdir(pool["path"]) == []
    assert os.listdir(agent.state_dir / "downloads") == []
    r = agent.client.call("template_download", pool=pool, name="t3", format="RAW", urls=[url],
                          checksum=sha256(data), options=OPTS, _timeout=120)
    assert r["size"] == len(data) and os.listdir(pool["path"]) == ["t3"]


@pytest.mark.slow
def test_template_download_into_nfs_pool(sim_agent, nfs_pool, http, tmp_path):
    pool, export_dir = nfs_pool
    image, packed = packed_qcow2(tmp_path, mib=8)
    mirrors = [http.add(f"/m{i}/img.qcow2.bz2", data=packed) for i in range(3)]
    c = sim_agent.client
    r = c.wait_task(c.call_async("template_download", pool=pool, name="tmpl-nfs", format="QCOW2", urls=mirrors,
                                 checksum=sha256(packed), options=OPTS))
    assert r["segmented"] and r["size"] == 8 * MiB and r["format"] == "qcow2"
    assert os.listdir(export_dir) == ["tmpl-nfs"]                      # on the export, under its final name
    cmp = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(tmp_path / "src.qcow2"),
                          str(export_dir / "tmpl-nfs")], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    info = c.call("volume_info", pool=pool, name="tmpl-nfs", format="qcow2")
    assert (info["format"], info["size"], info["backing"]) == ("qcow2", 8 * MiB, None)
    assert [p.name for p in (sim_agent.state_dir / "downloads").iterdir()] == ["nfs-1+tmpl-nfs.json"]
    with pytest.raises(errors.InvalidParameter, match="registered as RAW but it is a qcow2 image"):
        c.call("template_download", pool=pool, name="other", format="RAW", urls=mirrors[:1], options=OPTS)
    assert os.listdir(export_dir) == ["tmpl-nfs"]
    assert [p.name for p in (sim_agent.state_dir / "downloads").iterdir()] == ["nfs-1+tmpl-nfs.json"]


def test_simulated_host_answers_the_template_commands():
    from volstack.drivers.hosts import SimulatedHost
    h = SimulatedHost("sim-download-test")
    r = h.call("template_download", pool={"uuid": "p"}, name="t", format="QCOW2", urls=["http://x/t.qcow2"])
    assert (r["path"], r["format"], r["size"]) == ("t", "qcow2", 1 << 30)
    assert h.call("pool_list", pool={"uuid": "p"})["entries"][0]["name"] == "t"
    assert h.call("template_check_source", urls=["http://x/t.qcow2"], validators={})["changed"] is False


def test_https_source_with_the_hosts_ca_file(sim_agent, pool, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    data = os.urandom(MiB)
    with FileServer(tls=(str(cert), str(key))) as srv:
        url = srv.add("/t.raw", data=data)
        assert url.startswith("https://127.0.0.1:")
        with pytest.raises(errors.ResourceUnavailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            sim_agent.client.call("template_download", pool=pool, name="t", format="RAW", urls=[url], options=OPTS)
        r = sim_agent.client.call("template_download", pool=pool, name="t", format="RAW", urls=[url],
                                  checksum=sha256(data), options=dict(OPTS, ca_file=str(cert)))
    assert r["verified"] and open(os.path.join(pool["path"], "t"), "rb").read() == data
