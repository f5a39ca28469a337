"""Issue 3 acceptance through the API, on real parts: two `volstack agent` processes (real QEMU, TCG
guests that do real I/O), nfs-ganesha, local pools. Bytes are checked inside the guests."""

import hashlib

import pytest

from agentproc import AgentProcess
from guest import GuestConsole, GuestError, guest_image_dir, pattern_sha256
from helpers import wait_job
from support import add_datacenter, client, release_guests

GIB = 2 ** 30
MIB = 2 ** 20
pytestmark = pytest.mark.slow


@pytest.fixture
def kvm(server, tmp_path, nfs_pool):
    agents = [AgentProcess(tmp_path / f"agent{i}", name=f"kvm{i}").start() for i in (1, 2)]
    api = client(server)
    dc = add_datacenter(api, "kz", "kp", "kc", agents)
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    hosts = dc["hosts"]
    nfs_url, nfs_dir = nfs_pool
    nfs = api.createStoragePool(name="nfs", url=nfs_url, zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"])["storagepool"]
    locals_ = []
    for i, h in enumerate(hosts):
        d = tmp_path / f"local{i}"
        d.mkdir()
        locals_.append(api.createStoragePool(name=f"local{i}", url=f"file://localhost{d}", zoneid=zone["id"],
                                             scope="host", hostid=h["id"])["storagepool"])
    custom = api.createDiskOffering(name="custom", customized=True, displaytext="c")["diskoffering"]
    so = api.createServiceOffering(name="tiny", cpunumber=1, cpuspeed=500, memory=256, rootdisksize=1,
                                   displaytext="tiny")["serviceoffering"]
    image = guest_image_dir()
    ctx = dict(api=api, zone=zone, hosts=hosts, agents=agents, nfs=nfs, nfs_dir=nfs_dir, locals=locals_,
               custom=custom, so=so, image=image, vms=[])
    yield ctx
    release_guests(api, ctx["vms"], agents)


def boot(ctx, host_index: int):
    """A guest with the tiny test kernel on the given host; returns (vm, console)."""
    api, image = ctx["api"], ctx["image"]
    vm = api.deployVirtualMachine(zoneid=ctx["zone"]["id"], serviceofferingid=ctx["so"]["id"],
                                  hostid=ctx["hosts"][host_index]["id"],
                                  **{"details[0].kernel": str(image / "vmlinuz"), "details[0].initrd": str(image / "initrd.img"),
                                     "details[0].append": "console=ttyS0 quiet panic=-1"})["virtualmachine"]
    ctx["vms"].append(vm["id"])
    listed = ctx["agents"][host_index].client.call("vm_list")["vms"]
    console = GuestConsole(next(v for v in listed if v["name"] == vm["id"])["console"], timeout=60)
    import time
    deadline = time.monotonic() + 120
    while True:
        try:
            console.ping(timeout=2)
            return vm, console
        except (TimeoutError, GuestError):
            if time.monotonic() > deadline:
                raise


def serial(vol) -> str:
    return vol["id"].replace("-", "")[:20]


def test_data_survives_attach_detach_cold_migration_nfs_to_local_and_another_guest(kvm):
    api = kvm["api"]
    vm_a, con_a = boot(kvm, 0)
    vol = api.createVolume(name="data", zoneid=kvm["zone"]["id"], diskofferingid=kvm["custom"]["id"], size=1)["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm_a["id"])["volume"]
    assert vol["storageid"] == kvm["nfs"]["id"]
    assert (kvm["nfs_dir"] / vol["id"]).exists(), "the image is on the NFS export"
    con_a.dev(serial(vol))
    con_a.write(serial(vol), seed=7, mib=8)
    assert con_a.checksum(serial(vol), 8) == pattern_sha256(7, 8)
    api.detachVolume(id=vol["id"])
    target = kvm["locals"][1]
    moved = api.migrateVolume(volumeid=vol["id"], storageid=target["id"])["volume"]
    assert moved["storageid"] == target["id"] and moved["state"] == "Ready"
    assert not (kvm["nfs_dir"] / vol["id"]).exists(), "the source copy is removed after the move"
    vm_b, con_b = boot(kvm, 1)
    api.attachVolume(id=vol["id"], virtualmachineid=vm_b["id"])
    con_b.dev(serial(vol))
    assert con_b.checksum(serial(vol), 8) == pattern_sha256(7, 8)
    # local storage pins: kvm0's guest cannot use a volume on kvm1's local pool
    api.detachVolume(id=vol["id"])
    from cs import CloudStackApiException
    with pytest.raises(CloudStackApiException) as e:
        api.attachVolume(id=vol["id"], virtualmachineid=vm_a["id"])
    assert "local storage of another host" in str(e.value.error)


def test_live_migration_of_an_attached_volume_while_the_guest_writes(kvm, server):
    api = kvm["api"]
    vm_a, con = boot(kvm, 0)
    vol = api.createVolume(name="live", zoneid=kvm["zone"]["id"], diskofferingid=kvm["custom"]["id"], size=1)["volume"]
    api.attachVolume(id=vol["id"], virtualmachineid=vm_a["id"])
    con.dev(serial(vol))
    con.write(serial(vol), seed=1, mib=8)
    raw = client(server, fetch_result=False)
    jobid = raw.migrateVolume(volumeid=vol["id"], storageid=kvm["locals"][0]["id"], livemigrate=True)["jobid"]
    con.write(serial(vol), seed=2, mib=8, offset_mib=8)          # the guest keeps writing meanwhile
    job = wait_job(server, jobid, polls=6000)
    assert job["jobstatus"] == 1, job
    assert job["jobresult"]["volume"]["storageid"] == kvm["locals"][0]["id"]
    assert con.checksum(serial(vol), 8) == pattern_sha256(1, 8)
    assert con.checksum(serial(vol), 8, offset_mib=8) == pattern_sha256(2, 8)


def test_qos_from_the_offering_is_measured_in_the_guest_and_changed_online(kvm):
    api = kvm["api"]
    rate = 4 * MIB
    do = api.createDiskOffering(name="slow", customized=True, displaytext="slow", bytesreadrate=rate)["diskoffering"]
    vm, con = boot(kvm, 0)
    vol = api.createVolume(name="q", zoneid=kvm["zone"]["id"], diskofferingid=do["id"], size=1)["volume"]
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    con.dev(serial(vol))
    measured = con.bench_read(serial(vol), 16).mib_per_s
    assert abs(measured - 4) / 4 <= 0.2, f"{measured:.2f} MiB/s with a 4 MiB/s limit"
    api.updateDiskOffering(id=do["id"], bytesreadrate=2 * rate)
    measured = con.bench_read(serial(vol), 24).mib_per_s
    assert abs(measured - 8) / 8 <= 0.2, f"{measured:.2f} MiB/s after raising the limit to 8 MiB/s online"
    # the guest's real block statistics reach listVolumesMetrics
    api.updateConfiguration(name="volume.stats.interval", value="300")
    from agentproc import wait_until
    m = wait_until("volume metrics", lambda: [v for v in api.listVolumesMetrics(id=vol["id"])["volume"]
                                              if v["diskkbsread"] >= 40 * 1024], timeout=30)[0]
    assert m["diskioread"] > 0 and m["sizegb"] == "1.00 GB"


def test_find_pools_for_migration_and_agent_outage(kvm):
    api = kvm["api"]
    vol = api.createVolume(name="f", zoneid=kvm["zone"]["id"], diskofferingid=kvm["custom"]["id"], size=1)["volume"]
    vm, _ = boot(kvm, 0)
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    rows = {p["name"]: p["suitableformigration"] for p in api.findStoragePoolsForMigration(id=vol["id"])["storagepool"]}
    assert rows == {"local0": True, "local1": False}



def test_a_dead_agent_leaves_the_volume_stable_with_the_reason(kvm):
    api = kvm["api"]
    vm, _ = boot(kvm, 0)
    vol = api.createVolume(name="d", zoneid=kvm["zone"]["id"], diskofferingid=kvm["custom"]["id"], size=1)["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    api.detachVolume(id=vol["id"])
    kvm["agents"][1].stop()                       # the only host that reaches local1 goes away
    from cs import CloudStackApiException
    with pytest.raises(CloudStackApiException):
        api.migrateVolume(volumeid=vol["id"], storageid=kvm["locals"][1]["id"])
    after = api.listVolumes(id=vol["id"])["volume"][0]
    assert after["state"] == "Ready" and after["storageid"] == kvm["nfs"]["id"]
    assert "migration to local1 failed" in after["status"]
    assert (kvm["nfs_dir"] / vol["id"]).exists(), "the source is intact"


def test_live_migration_of_a_running_guest_to_the_other_host(kvm, server):
    """The guest writes to its NFS data disk while its memory moves to the other host; it keeps running there
    (its memory, a marker in its tmpfs, came along) and the data is intact."""
    api, agents = kvm["api"], kvm["agents"]
    vm, con = boot(kvm, 0)
    vol = api.createVolume(name="mig", zoneid=kvm["zone"]["id"], diskofferingid=kvm["custom"]["id"], size=1)["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert vol["storageid"] == kvm["nfs"]["id"]
    dev = con.dev(serial(vol))
    con.write(serial(vol), seed=4, mib=8)
    con.sh("echo still-the-same-guest > /tmp/marker")
    # a background writer in the guest: MiB i of pattern seed 5 at offset 8+i, then a done flag
    con.sh(f"(i=0; while [ $i -lt 16 ]; do yes \"volstack seed=5 mib=$i\" | head -c 1048576 | dd of={dev} bs=1048576 "
           "seek=$((8 + i)) iflag=fullblock oflag=direct conv=notrunc 2>/dev/null; i=$((i + 1)); done; sync; "
           "echo done > /tmp/bgdone) >/dev/null 2>&1 &")
    raw = client(server, fetch_result=False)
    jobid = raw.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=kvm["hosts"][1]["id"])["jobid"]
    job = wait_job(server, jobid, polls=6000)
    assert job["jobstatus"] == 1, job
    moved = job["jobresult"]["virtualmachine"]
    assert (moved["state"], moved["hostid"]) == ("Running", kvm["hosts"][1]["id"])
    assert [v for v in agents[0].client.call("vm_list")["vms"] if v["name"] == vm["id"]] == [], "source copy gone"
    there = next(v for v in agents[1].client.call("vm_list")["vms"] if v["name"] == vm["id"])
    assert there["state"] == "Running"
    con.close()
    con = GuestConsole(there["console"], timeout=60)
    con.ping_until_ready(timeout=60)
    assert con.sh("cat /tmp/marker") == ["still-the-same-guest"]
    from agentproc import wait_until
    wait_until("the guest's background writer", lambda: con.sh("cat /tmp/bgdone 2>/dev/null", check=False) == ["done"],
               timeout=120, interval=0.5)
    assert con.checksum(serial(vol), 8) == pattern_sha256(4, 8)
    assert con.checksum(serial(vol), 16, offset_mib=8) == pattern_sha256(5, 16)
    con.write(serial(vol), seed=6, mib=4, offset_mib=24)               # and it keeps doing I/O there
    assert con.checksum(serial(vol), 4, offset_mib=24) == pattern_sha256(6, 4)
    assert api.listVolumes(id=vol["id"])["volume"][0]["storageid"] == kvm["nfs"]["id"], "disks stay on NFS"


def test_a_volatile_offering_gives_the_guest_a_fresh_root_disk_on_reboot(kvm):
    api, image = kvm["api"], kvm["image"]
    so = api.createServiceOffering(name="volatile", cpunumber=1, cpuspeed=500, memory=256, rootdisksize=1,
                                   isvolatile=True, displaytext="v")["serviceoffering"]
    vm = api.deployVirtualMachine(zoneid=kvm["zone"]["id"], serviceofferingid=so["id"], hostid=kvm["hosts"][0]["id"],
                                  **{"details[0].kernel": str(image / "vmlinuz"), "details[0].initrd": str(image / "initrd.img"),
                                     "details[0].append": "console=ttyS0 quiet panic=-1"})["virtualmachine"]
    kvm["vms"].append(vm["id"])
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]

    def console():
        listed = kvm["agents"][0].client.call("vm_list")["vms"]
        con = GuestConsole(next(v for v in listed if v["name"] == vm["id"])["console"], timeout=60)
        con.ping_until_ready(timeout=120)
        return con
    con = console()
    con.write(serial(root), seed=9, mib=2)
    assert con.checksum(serial(root), 2) == pattern_sha256(9, 2)
    con.close()
    assert api.rebootVirtualMachine(id=vm["id"])["virtualmachine"]["state"] == "Running"
    con = console()
    assert con.checksum(serial(root), 2) != pattern_sha256(9, 2), "the root disk was made anew"
    assert con.checksum(serial(root), 2) == hashlib.sha256(bytes(2 * MIB)).hexdigest()
