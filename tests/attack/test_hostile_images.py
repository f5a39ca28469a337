"""Hostile images on every path that reads an image (issue 11 holes 1, 3 and 7): a tenant's RAW volume whose
guest wrote a qcow2 header naming a root-only host file as its backing (or external data) file, image files an
admin imports that are links to host files, and compressed sources that unpack past the size limit.

A real `volstack agent` (simulated guests, real qemu-img on real pools and a real image store) behind the
in-process management server; the tenant works through the API. The hostile bytes are written into the volume's
file on the pool, which is exactly what its guest can do."""
import bz2
import gzip
import io
import lzma
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import test_templates  # noqa: E402
from test_templates import add_store, error_of, wait_template  # noqa: E402
from test_transfers import browser_post, monitor, user_api  # noqa: E402
from helpers import wait_job  # noqa: E402
from httpserver import FileServer  # noqa: E402

from volstack.agent import unpack  # noqa: E402

cloud = test_templates.cloud            # a zone, a real agent (simulated guests), pool `primary`
MiB = 1 << 20
GiB = 1 << 30
MARK = b"VOLSTACK-HOST-SECRET-7f3a9c"


@pytest.fixture
def hostile(cloud):
    """The zone with an image store, a second pool, a root-only host file, a tenant and its stopped VM."""
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    (tmp / "primary2").mkdir()
    cl = api.listClusters()["cluster"][0]
    pool2 = api.createStoragePool(name="primary2", url=f"SharedMountPoint://localhost{tmp / 'primary2'}",
                                  zoneid=cloud["zone"]["id"], podid=cl["podid"], clusterid=cl["id"])["storagepool"]
    secret = tmp / "host-secret"
    secret.write_bytes(MARK * (64 * 1024 // len(MARK)))
    secret.chmod(0o600)
    alice = user_api(cloud)
    vm = alice.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                    rootdisksize=1)["virtualmachine"]
    return dict(cloud, pool2=pool2, secret=secret, alice=alice, vm=vm)


def hostile_header(tmp: Path, secret: Path, how: str = "backing") -> bytes:
    """The first bytes of a qcow2 image whose backing (or raw external data) file is the host file. qemu-img
    create would write the data file, so it makes one on a stand-in name of the same length, swapped after."""
    path, stand_in = tmp / f"hostile-{how}.qcow2", secret.with_name(secret.name[:-1] + "_")
    opts = ["-b", str(secret), "-F", "raw"] if how == "backing" else \
        ["-o", f"data_file={stand_in},data_file_raw=on,preallocation=metadata"]   # clusters mapped 1:1
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *opts, str(path), "1M"], check=True,
                   capture_output=True)
    data = path.read_bytes().replace(str(stand_in).encode(), str(secret).encode())
    assert str(secret).encode() in data and MARK in secret.read_bytes()
    return data


def guest_writes(image: Path, data: bytes) -> None:
    """What the guest does to its raw disk: its bytes from offset 0, in place."""
    with open(image, "r+b") as f:
        f.write(data)


def raw_volume(c, name="evil", attach=True):
    """A tenant's RAW volume, uploaded from the browser and attached to its VM: (volume, its file)."""
    alice = c["alice"]
    params = alice.getUploadParamsForVolume(name=name, zoneid=c["zone"]["id"], format="RAW")["getuploadparams"]
    r = browser_post(params, b"\x5a" * (4 * MiB), filename="disk.raw")
    assert r.status_code == 200, r.text
    monitor(c)
    vol = alice.attachVolume(id=params["id"], virtualmachineid=c["vm"]["id"])["volume"]
    assert vol["state"] == "Ready"
    if not attach:
        alice.detachVolume(id=vol["id"])
    return vol, file_of(c, vol["id"])


def file_of(c, vol_id) -> Path:
    vol = c["api"].listVolumes(id=vol_id, listall=True)["volume"][0]
    pool = c["api"].listStoragePools(id=vol["storageid"])["storagepool"][0]
    return Path(pool["path"]) / vol["path"]


def leaks(c, *blobs) -> list[str]:
    """Where the host file's content appears: the given bytes, or any file on the pools and the store."""
    found = [f"response {i}" for i, b in enumerate(blobs) if MARK in b]
    for d in ("primary", "primary2", "store"):
        for p in (c["tmp"] / d).rglob("*"):
            if p.is_file() and not p.is_symlink() and any(MARK in chunk for chunk in data_of(p)):
                found.append(str(p))
    return found


def data_of(path: Path, chunk: int = 4 * MiB):
    """The file's data extents (holes skipped: a grown sparse volume is read in no time), overlapping by the
    marker's length so nothing is missed at a chunk boundary."""
    fd = os.open(path, os.O_RDONLY)
    try:
        end, pos = os.fstat(fd).st_size, 0
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                return              # only a hole is left
            data = os.pread(fd, chunk + len(MARK), pos)
            if not data:
                return
            yield data
            pos += chunk
    finally:
        os.close(fd)


def test_issue_repro_migrate_then_extract_a_raw_volume_with_a_guest_written_qcow2_header(hostile):
    """Hole 1 as reported: upload RAW, attach, the guest writes a qcow2 header naming a 0600 host file (as its
    backing file, or as its raw external data file), stop the VM, migrateVolume to another pool, extractVolume:
    the host file must appear nowhere."""
    c, alice = hostile, hostile["alice"]
    vols = []
    for how in ("backing", "data-file"):
        vol, image = raw_volume(c, name=how)
        header = hostile_header(c["tmp"], c["secret"], how)
        guest_writes(image, header)
        vols.append((vol, header))
    alice.stopVirtualMachine(id=c["vm"]["id"])
    for vol, header in vols:
        old = file_of(c, vol["id"])
        to = c["pool2"] if old.parent.name == "primary" else c["pool"]
        moved = alice.migrateVolume(volumeid=vol["id"], storageid=to["id"])["volume"]
        assert moved["state"] == "Ready" and recorded_format(c, vol["id"]) == "RAW"
        new = file_of(c, vol["id"])
        assert new.parent != old.parent and leaks(c) == []
        assert new.read_bytes()[:len(header)] == header          # the guest's bytes, moved as they are
        ex = alice.extractVolume(id=vol["id"], mode="HTTP_DOWNLOAD", zoneid=c["zone"]["id"])["volume"]
        got = requests.get(ex["url"], timeout=60)
        assert got.status_code == 200 and len(got.content) > len(header)
        assert leaks(c, got.content) == []


def recorded_format(c, vol_id) -> str:
    from sqlalchemy import select
    from volstack.db.storage_models import Volume
    with c["server"].db.session(readonly=True) as s:
        return s.scalar(select(Volume.format).where(Volume.uuid == vol_id))


def test_resize_of_a_raw_volume_with_a_qcow2_header_grows_the_raw_image(hostile):
    """resizeVolume used to probe the format: it resized the guest's fake qcow2 header instead of the volume."""
    c, alice = hostile, hostile["alice"]
    vol, image = raw_volume(c, attach=False)
    header = hostile_header(c["tmp"], c["secret"])
    guest_writes(image, header)
    offering = c["api"].createDiskOffering(name="custom", customized=True, displaytext="custom")["diskoffering"]
    alice.resizeVolume(id=vol["id"], size=1, diskofferingid=offering["id"])
    with open(image, "rb") as f:
        assert image.stat().st_size == GiB and f.read(len(header)) == header
    assert leaks(c) == []


def test_snapshot_backup_and_templates_from_a_hostile_raw_volume_leak_nothing(hostile):
    """createSnapshot (+ backup to the store), createTemplate from the volume and from the snapshot, and a volume
    from that template: every copy reads the volume as the RAW image volstack recorded."""
    c, alice = hostile, hostile["alice"]
    vol, image = raw_volume(c, attach=False)
    header = hostile_header(c["tmp"], c["secret"])
    guest_writes(image, header)
    snap = alice.createSnapshot(volumeid=vol["id"])["snapshot"]
    assert snap["state"] == "BackedUp"
    t1 = alice.createTemplate(name="from-vol", displaytext="v", ostypeid=ostype(c), volumeid=vol["id"])["template"]
    t2 = alice.createTemplate(name="from-snap", displaytext="s", ostypeid=ostype(c), snapshotid=snap["id"])["template"]
    for t in (t1, t2):
        store_copy = c["tmp"] / "store" / f"{t['id']}.qcow2"
        r = subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={store_copy}",
                            f"of={c['tmp'] / 'check.raw'}", "bs=1M", "count=1"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert (c["tmp"] / "check.raw").read_bytes()[:len(header)] == header
    assert leaks(c) == []


def ostype(c):
    return c["api"].listOsTypes()["ostype"][0]["id"]


# ---------------------------------------------------------------- registration and upload of user images

@pytest.fixture
def http():
    with FileServer() as srv:
        yield srv


def test_register_and_upload_refuse_images_that_reference_host_files(hostile, http):
    c, api = hostile, hostile["api"]
    api.updateConfiguration(name="secstorage.allowed.internal.sites", value="127.0.0.1/32")
    for how in ("backing", "data-file"):
        refused_everywhere(c, http, how)


def refused_everywhere(c, http, how):
    alice, api = c["alice"], c["api"]
    data = hostile_header(c["tmp"], c["secret"], how)
    needle = "backing file" if how == "backing" else "external data file"
    url = http.add(f"/evil-{how}.qcow2", data=data)
    t = alice.registerTemplate(name=f"evil-{how}", displaytext="e", url=url, format="QCOW2", hypervisor="KVM",
                               ostypeid=ostype(c), zoneid=c["zone"]["id"])["template"][0]
    t = wait_template(api, t["id"])
    assert not t["isready"] and needle in t["status"]
    code, text = error_of(lambda: alice.uploadVolume(name=f"evil-{how}", url=url, format="QCOW2",
                                                      zoneid=c["zone"]["id"]))
    assert code == 431 and needle in text, text
    [vol] = [v for v in alice.listVolumes()["volume"] if v["name"] == f"evil-{how}"]
    assert vol["state"] == "UploadError" and needle in vol["status"], vol
    params = alice.getUploadParamsForVolume(name=f"evil2-{how}", zoneid=c["zone"]["id"], format="QCOW2")["getuploadparams"]
    r = browser_post(params, data)
    assert r.status_code == 400 and needle in r.json()["error"]
    assert leaks(c) == []


# ---------------------------------------------------------------- importVolume (hole 7)

def test_import_volume_refuses_links_and_images_that_reference_host_files(hostile):
    c, api = hostile, hostile["api"]
    for what in ("symlink", "hardlink", "backing", "data-file"):
        import_refused(c, what)
    path = c["tmp"] / "primary" / "plain"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    vol = api.importVolume(storageid=c["pool"]["id"], path="plain", name="imp")["volume"]
    assert vol["size"] == 64 * MiB and recorded_format(c, vol["id"]) == "QCOW2"


def import_refused(c, what):
    api = c["api"]
    target = c["tmp"] / "primary" / f"foreign-{what}"
    if what == "symlink":
        target.symlink_to(c["secret"])
        needle = "symbolic link"
    elif what == "hardlink":
        os.link(c["secret"], target)
        needle = "hard links"
    else:
        target.write_bytes(hostile_header(c["tmp"], c["secret"], what))
        needle = "backing file" if what == "backing" else "external data file"
    code, text = error_of(lambda: api.importVolume(storageid=c["pool"]["id"], path=target.name, name="imp"))
    assert code == 431 and needle in text, (what, text)
    assert [v for v in api.listVolumes(listall=True).get("volume", []) if v["name"] == "imp"] == []


# ---------------------------------------------------------------- decompression bombs (hole 3)

def bomb_of(kind: str, size: int, member: int = 4 * MiB) -> bytes:
    """size zero bytes as concatenated members (valid .gz/.bz2/.xz streams; one member compressed once)."""
    zeros = b"\0" * member
    one = {"gz": lambda: gzip.compress(zeros, 9), "bz2": lambda: bz2.compress(zeros, 9),
           "xz": lambda: lzma.compress(zeros)}[kind]()
    return one * (size // member)


def zip_bomb(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open("disk.raw", "w", force_zip64=True) as f:
        chunk = b"\0" * (4 * MiB)
        for _ in range(size // len(chunk)):
            f.write(chunk)
    return buf.getvalue()


class Counting:
    """A file that counts what would be written (the Sink's output)."""
    def __init__(self):
        self.n = 0

    def write(self, data):
        self.n += len(data)

    def seek(self, n, whence):
        self.n += n

    def truncate(self, n):
        pass


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "zip"])
def test_unpacking_stops_the_moment_it_passes_the_limit(kind):
    """A small source that would unpack to 128 MiB or more, fed as it streams in, against an 8 MiB limit: the
    unpacking stops having written at most the limit and having read only the first part of the source."""
    limit, bomb = 8 * MiB, zip_bomb(128 * MiB) if kind == "zip" else bomb_of(kind, 256 * MiB)
    sink = unpack.Sink(Counting(), f"http://h/disk.raw.{kind}", None, limit=limit,
                       limit_setting="max.template.iso.size = 0 GB")
    fed = 0
    with pytest.raises(unpack.TooLarge, match=r"unpacks to more than 8388608 bytes, the limit "
                                               r"\(max.template.iso.size = 0 GB\)"):
        for i in range(0, len(bomb), 4096):
            sink.write(bomb[i:i + 4096])
            fed += 4096
    assert sink.out.n <= limit
    assert fed < len(bomb) / 4, f"read {fed} of {len(bomb)} bytes before stopping"


def test_a_decompression_bomb_fails_the_download_with_the_setting_in_its_status(hostile, http):
    """Through the API: the limit is max.template.iso.size for templates (and storage.max.volume.upload.size for
    uploadVolume); the download stops, the template says why, and nothing is left on the store."""
    c, api = hostile, hostile["api"]
    api.updateConfiguration(name="secstorage.allowed.internal.sites", value="127.0.0.1/32")
    api.updateConfiguration(name="max.template.iso.size", value="0")
    api.updateConfiguration(name="storage.max.volume.upload.size", value="0")
    url = http.add("/bomb.raw.bz2", data=bomb_of("bz2", 256 * MiB))
    t = api.registerTemplate(name="bomb", displaytext="b", url=url, format="RAW", hypervisor="KVM",
                             ostypeid=ostype(c), zoneid=c["zone"]["id"])["template"][0]
    t = wait_template(api, t["id"])
    assert not t["isready"] and "more than 0 bytes, the limit (max.template.iso.size = 0 GB); stopped there" \
        in t["status"], t["status"]
    code, text = error_of(lambda: c["alice"].uploadVolume(name="bomb", url=url, format="RAW", zoneid=c["zone"]["id"]))
    assert code == 431 and "(storage.max.volume.upload.size = 0 GB)" in text, text
    assert list((c["tmp"] / "store").iterdir()) == []        # nothing left, not even a partial file
