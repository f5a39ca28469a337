"""The tiny test guest (scripts/build-guest.sh) boots under TCG QEMU and its disk exerciser does real I/O
on hot-plugged virtio disks, checked against the host's view of the same pattern."""
import hashlib
import subprocess

import pytest

from guest import MiB, GuestError, GuestVM, pattern_bytes, pattern_sha256
from nfsserver import shared_server

pytestmark = pytest.mark.slow      # one TCG boot (~3 s) plus guest I/O


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    with GuestVM(tmp_path_factory.mktemp("guest")) as v:
        yield v


def host_sha256(image: str, mib: int, tmp_path) -> str:
    """sha256 of the first `mib` MiB of a qcow2 image as the host sees it (-U: the running QEMU holds the
    image lock; the guest's fsync made QEMU flush its metadata)."""
    raw = tmp_path / "host-view.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", image, str(raw)],
                   check=True, capture_output=True, timeout=120)
    with open(raw, "rb") as f:
        data = f.read(mib * MiB)
    raw.unlink()
    assert len(data) == mib * MiB
    return hashlib.sha256(data).hexdigest()


def test_boots_to_ready(vm):
    assert "kernel=" in vm.ready_line
    vm.console.ping()
    assert vm.console.disks() == {}


def test_pattern_helpers_agree():
    assert hashlib.sha256(pattern_bytes(3, 2)).hexdigest() == pattern_sha256(3, 2)
    assert pattern_sha256(3, 2) != pattern_sha256(4, 2)


def test_hotplugged_disk_write_checksum_bench_unplug(vm, tmp_path):
    img = tmp_path / "vol1.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "64M"], check=True)
    vm.qmp.cmd("blockdev-add", {"node-name": "vol1", "driver": "qcow2",
                                "file": {"driver": "file", "filename": str(img)}})
    dev_id = vm.plug("vol1", serial="vol1")
    con = vm.console
    assert con.dev("vol1").startswith("/dev/vd")
    assert con.disks()["vol1"][1] == 64 * MiB

    assert con.write("vol1", seed=42, mib=8) == 8 * MiB
    expected = pattern_sha256(42, 8)
    assert con.checksum("vol1", 8) == expected          # the guest reads back what it wrote
    assert host_sha256(str(img), 8, tmp_path) == expected         # and it really is in the qcow2 on the host
    # a second write at an offset leaves the first one alone
    con.write("vol1", seed=43, mib=2, offset_mib=16)
    assert con.checksum("vol1", 2, offset_mib=16) == pattern_sha256(43, 2)
    assert con.checksum("vol1", 8) == expected

    stats_before = {d["device"] or d["qdev"]: d for d in vm.qmp.cmd("query-blockstats")}
    b = con.bench("read", "vol1", "4k", 256)
    assert (b.bytes, b.ops) == (256 * 4096, 256) and b.ns > 0 and b.iops > 0
    w = con.bench_write("vol1", 4)
    assert w.bytes == 4 * MiB and w.mib_per_s > 0
    qdev = f"/machine/peripheral/{dev_id}/virtio-backend"
    after = {d["device"] or d["qdev"]: d for d in vm.qmp.cmd("query-blockstats")}[qdev]["stats"]
    before = stats_before[qdev]["stats"]
    assert after["rd_operations"] - before["rd_operations"] >= 256    # the dd went through QEMU's block layer
    assert after["wr_bytes"] - before["wr_bytes"] >= 4 * MiB

    with pytest.raises(GuestError, match="no disk with serial 'nosuch'") as e:
        con.run("dev", "nosuch", 0)                                     # errors come back as ERR + rc
    assert e.value.rc == 2

    vm.unplug(dev_id, node="vol1")
    assert "vol1" not in con.disks()


def test_disk_on_nfs_export(vm, tmp_path):
    """The same through QEMU's nfs driver against the test NFS server (the primary-storage path)."""
    nfs = shared_server()
    url = nfs.add_export("/guest-pool", tmp_path / "pool")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", f"{url}/vol2.qcow2", "32M"], check=True)
    vm.qmp.cmd("blockdev-add", {"node-name": "vol2", "driver": "qcow2",
                                "file": {"driver": "nfs", "server": {"type": "inet", "host": nfs.host},
                                         "path": "/guest-pool/vol2.qcow2"}})
    dev_id = vm.plug("vol2", serial="vol2")
    vm.console.write("vol2", seed=7, mib=4)
    assert vm.console.checksum("vol2", 4) == pattern_sha256(7, 4)
    assert host_sha256(str(tmp_path / "pool" / "vol2.qcow2"), 4, tmp_path) == pattern_sha256(7, 4)
    vm.unplug(dev_id, node="vol2")
    nfs.remove_export("/guest-pool")
