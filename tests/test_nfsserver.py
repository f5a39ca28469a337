"""The throwaway NFS server (tests/nfsserver.py) works with the real clients volstack uses: qemu-img /
qemu-io over nfs:// (libnfs, NFSv3) and nfs-ls."""
import ctypes
import json
import os
import subprocess
import sys
import time

import pytest

import nfsserver
from nfsserver import NfsServer, NfsServerBusy, portmapper_running, shared_server, stop_shared_server

PR_SET_CHILD_SUBREAPER = 36


def run(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=check)


@pytest.fixture
def nfs():
    return shared_server()


def test_addresses(nfs):
    assert nfs.url == "nfs://127.0.0.1/export"
    assert (nfs.host, nfs.export) == ("127.0.0.1", "/export")
    assert nfs.url_for("a/b.qcow2") == "nfs://127.0.0.1/export/a/b.qcow2"
    assert nfs.path_for("b.qcow2") == nfs.dir / "b.qcow2" and nfs.dir.is_dir()
    assert nfs.running and shared_server() is nfs


def test_qemu_img_create_info_and_listing(nfs):
    url = nfs.url_for("create-info.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", url, "64M")
    info = json.loads(run("qemu-img", "info", "--output=json", url).stdout)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 << 20)
    assert nfs.exists("create-info.qcow2")                     # the file is in the export directory
    assert "create-info.qcow2" in nfs.ls()                      # and an NFS client lists it
    local = json.loads(run("qemu-img", "info", "--output=json", str(nfs.path_for("create-info.qcow2"))).stdout)
    assert local["virtual-size"] == 64 << 20


def test_write_over_nfs_read_locally_and_back(nfs, tmp_path):
    url = nfs.url_for("io.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", url, "16M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 2M", url)
    # the bytes are in the image file on the server's disk ...
    run("qemu-io", "-f", "qcow2", "-c", "read -P 0xab 1M 2M", "-c", "read -P 0 0 1M", str(nfs.path_for("io.qcow2")))
    # ... and read back over NFS; qemu-io reports a pattern mismatch on stdout with rc 0, so check the text
    out = run("qemu-io", "-f", "qcow2", "-c", "read -P 0xab 1M 2M", url).stdout
    assert "Pattern verification failed" not in out and "read 2097152/2097152" in out
    # convert: local raw -> nfs qcow2 -> compare
    raw = tmp_path / "src.raw"
    raw.write_bytes(os.urandom(1 << 20) * 3)
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), nfs.url_for("converted.qcow2"))
    assert nfs.exists("converted.qcow2")
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), nfs.url_for("converted.qcow2"))
    # a linked clone with an absolute nfs:// backing file
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", nfs.url_for("converted.qcow2"), "-F", "qcow2",
        nfs.url_for("clone.qcow2"))
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), nfs.url_for("clone.qcow2"))


def test_file_deleted_in_export_dir_can_be_recreated_over_nfs(nfs):
    """No NFS3ERR_STALE: caching is off, because tests poke at the export directory directly."""
    url = nfs.url_for("recreated.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", url, "1M")
    nfs.path_for("recreated.qcow2").unlink()
    assert "recreated.qcow2" not in nfs.ls()
    run("qemu-img", "create", "-q", "-f", "qcow2", url, "2M")
    assert json.loads(run("qemu-img", "info", "--output=json", url).stdout)["virtual-size"] == 2 << 20


def test_add_and_remove_export(nfs, tmp_path):
    pool = tmp_path / "pool2"
    url = nfs.add_export("/pool2", pool)
    assert url == "nfs://127.0.0.1/pool2" and pool.is_dir()
    assert nfs.add_export("/pool2", pool) == url                # idempotent
    with pytest.raises(nfsserver.NfsServerError):
        nfs.add_export("/pool2", tmp_path / "elsewhere")
    try:
        run("qemu-img", "create", "-q", "-f", "qcow2", f"{url}/v.qcow2", "8M")
        assert (pool / "v.qcow2").is_file() and nfs.exists("v.qcow2", pseudo="/pool2")
        assert not nfs.exists("v.qcow2")                         # not in the main export
        assert nfs.ls("/pool2") == ["v.qcow2"]
        # two pools side by side, each with its own directory
        url3 = nfs.add_export("/pool3", tmp_path / "pool3")
        run("qemu-img", "create", "-q", "-f", "raw", f"{url3}/r.img", "1M")
        assert (tmp_path / "pool3" / "r.img").is_file()
        nfs.remove_export("/pool3")
    finally:
        nfs.remove_export("/pool2")
    assert run("nfs-ls", url, check=False).returncode != 0
    assert run("qemu-img", "info", f"{url}/v.qcow2", check=False).returncode != 0
    assert (pool / "v.qcow2").is_file()                          # removing an export keeps the files
    assert run("nfs-ls", nfs.url).returncode == 0               # the main export is untouched


def test_listens_on_loopback_only(nfs):
    import socket
    if nfs.bind_addr != "::ffff:127.0.0.1":
        pytest.skip("no IPv6 address on this host: ganesha 4.3 cannot be bound to 127.0.0.1 alone here")
    for port in (nfs.port, nfs.mnt_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) == 0
        with socket.socket() as s:     # another loopback address: nothing listens there
            assert s.connect_ex(("127.0.0.2", port)) != 0


def test_only_one_server_per_machine(nfs, tmp_path):
    with pytest.raises(NfsServerBusy, match="already running"):
        NfsServer(tmp_path).start(wait=0)        # not $VOLSTACK_NFS_WAIT: it would wait for its own session
    assert nfs.running


# ---------------------------------------------------------------------- lifecycle (restarts the shared one)
def _alive(pid):
    return nfsserver._alive(pid)


def test_stop_kills_only_its_own_processes_and_cleans_up(tmp_path):
    stop_shared_server()
    foreign_portmapper = portmapper_running()
    t0 = time.monotonic()
    srv = NfsServer(tmp_path / "nfs").start()
    started = time.monotonic() - t0
    gpid = srv.pid
    rpcbind = srv._rpcbind
    assert _alive(gpid)
    assert (rpcbind is None) == foreign_portmapper   # reuses a running portmapper, else starts its own
    t0 = time.monotonic()
    srv.stop()
    stopped = time.monotonic() - t0
    assert not _alive(gpid)
    if rpcbind:
        assert not _alive(rpcbind[0])
        assert not any(os.path.exists(f) for f in nfsserver.RPCBIND_FILES)
    else:
        assert portmapper_running()                  # someone else's: left running
    assert started < 10 and stopped < 10
    srv.stop()                                       # idempotent
    assert shared_server().running                   # the shared one comes back on demand


def test_reuses_a_running_portmapper_and_leaves_it_alone(tmp_path):
    stop_shared_server()
    if portmapper_running():
        pytest.skip("a portmapper is already running here: the reuse path is what every other test takes")
    p = subprocess.Popen(["rpcbind", "-f"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        nfsserver._wait("rpcbind", portmapper_running, time.monotonic() + 10, alive=lambda: p.poll() is None)
        srv = NfsServer(tmp_path / "nfs").start()
        assert srv._rpcbind is None
        run("qemu-img", "create", "-q", "-f", "raw", srv.url_for("x.img"), "1M")
        srv.stop()
        assert p.poll() is None and portmapper_running()
    finally:
        nfsserver._stop_pid(p.pid, None)
        p.wait(timeout=10)
        for f in nfsserver.RPCBIND_FILES:
            if os.path.exists(f):
                os.unlink(f)


def test_orphans_of_a_crashed_run_are_reaped(tmp_path, request):
    """A test process killed with SIGKILL leaves ganesha (and maybe rpcbind) behind; the next start stops
    exactly those recorded PIDs instead of refusing forever."""
    stop_shared_server()
    # Become the orphans' parent (child subreaper) while this test runs, so that once stopped they can be
    # reaped here instead of lingering as zombies under an init that does not reap.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    request.addfinalizer(lambda: libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0))
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); from nfsserver import NfsServer;"
         "s = NfsServer(sys.argv[2]).start(); print(s.pid, flush=True); sys.stdin.read()",
         os.path.dirname(nfsserver.__file__), str(tmp_path / "crashed")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        orphan = int(child.stdout.readline())
        rec = json.loads(open(nfsserver.LOCK_FILE).read())
        orphan_rpcbind = rec["rpcbind"][0] if rec["rpcbind"] else None
    finally:
        child.kill()
        child.wait(timeout=10)
    assert _alive(orphan)                            # ganesha survived its owner (own session)
    srv = NfsServer(tmp_path / "next").start()
    try:
        assert not _alive(orphan) and srv.pid != orphan
        run("nfs-ls", srv.url)
    finally:
        srv.stop()
    for pid in (orphan, orphan_rpcbind):             # reaped, not left as zombies
        if pid:
            # the kernel may hand a just-killed orphan to this subreaper after stop() looked: reap it then
            deadline = time.monotonic() + 5
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.02)
            assert not os.path.exists(f"/proc/{pid}")
