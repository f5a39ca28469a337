"""Issue 6 acceptance on real parts: a `volstack agent` with real QEMU (a TCG guest doing real I/O), a host-local
pool and a Filesystem image store. The guest writes known data while live snapshots are taken; the bytes are
checked inside the guest."""
import hashlib
import subprocess
import time

import pytest

from agentproc import AgentProcess, wait_until
from guest import GuestConsole, GuestError, guest_image_dir, pattern_bytes, pattern_sha256
from support import add_datacenter, client, release_guests
from test_storage_real import serial

MIB = 2 ** 20
pytestmark = pytest.mark.slow


@pytest.fixture
def kvm(server, tmp_path):
    agent = AgentProcess(tmp_path / "agent", name="kvm1").start()
    api = client(server)
    dc = add_datacenter(api, "sz", "sp", "sc", [agent])
    zone, host = dc["zone"], dc["host"]
    for d in ("local", "store"):
        (tmp_path / d).mkdir()
    api.createStoragePool(name="local", url=f"file://localhost{tmp_path / 'local'}", zoneid=zone["id"], scope="host",
                          hostid=host["id"])
    api.addImageStore(name="store", provider="Filesystem", url=f"file://{tmp_path / 'store'}", zoneid=zone["id"])
    custom = api.createDiskOffering(name="custom", customized=True, displaytext="c", storagetype="local")["diskoffering"]
    so = api.createServiceOffering(name="tiny", cpunumber=1, cpuspeed=500, memory=256, rootdisksize=1,
                                   storagetype="local", displaytext="tiny")["serviceoffering"]
    ctx = dict(api=api, zone=zone, agent=agent, custom=custom, so=so, image=guest_image_dir(), tmp=tmp_path, vms=[])
    yield ctx
    release_guests(api, ctx["vms"], [agent])


def console(ctx, vm_id) -> GuestConsole:
    listed = ctx["agent"].client.call("vm_list")["vms"]
    con = GuestConsole(next(v for v in listed if v["name"] == vm_id)["console"], timeout=60)
    deadline = time.monotonic() + 120
    while True:                          # the guest may still be booting: ping until it answers
        try:
            con.ping(timeout=2)
            return con
        except (TimeoutError, GuestError):
            if time.monotonic() > deadline:
                raise


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_live_incremental_snapshots_while_the_guest_writes_and_revert_to_the_second_of_three(kvm):
    api, image = kvm["api"], kvm["image"]
    api.updateConfiguration(name="kvm.incremental.snapshot", value="true")
    vm = api.deployVirtualMachine(zoneid=kvm["zone"]["id"], serviceofferingid=kvm["so"]["id"],
                                  **{"details[0].kernel": str(image / "vmlinuz"),
                                     "details[0].initrd": str(image / "initrd.img"),
                                     "details[0].append": "console=ttyS0 quiet panic=-1"})["virtualmachine"]
    kvm["vms"].append(vm["id"])
    con = console(kvm, vm["id"])
    vol = api.createVolume(name="data", zoneid=kvm["zone"]["id"], diskofferingid=kvm["custom"]["id"], size=1)["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    dev, ser = con.dev(serial(vol)), serial(vol)

    con.write(ser, seed=1, mib=8)
    s1 = api.createSnapshot(volumeid=vol["id"], name="s1")["snapshot"]
    con.write(ser, seed=2, mib=4)
    # a background writer keeps the guest writing (MiB 64.. of seed 5) while the second snapshot is taken
    con.sh(f"(i=0; while [ $i -lt 16 ]; do yes \"volstack seed=5 mib=$i\" | head -c 1048576 | dd of={dev} bs=1048576 "
           "seek=$((64 + i)) iflag=fullblock oflag=direct conv=notrunc 2>/dev/null; i=$((i + 1)); done; sync; "
           "echo done > /tmp/bgdone) >/dev/null 2>&1 &")
    s2 = api.createSnapshot(volumeid=vol["id"], name="s2")["snapshot"]
    wait_until("the guest's background writer", lambda: con.sh("cat /tmp/bgdone 2>/dev/null", check=False) == ["done"],
               timeout=120, interval=0.5)
    con.write(ser, seed=3, mib=4, offset_mib=2)
    s3 = api.createSnapshot(volumeid=vol["id"], name="s3")["snapshot"]
    assert "parent" not in s1 and s2["parent"] == s1["id"] and s3["parent"] == s2["id"]
    # s3 holds only what was written after s2's instant: seed 3 and the writer's MiBs that came after it
    assert s3["physicalsize"] < (4 + 16 + 1) * MIB, s3["physicalsize"]
    assert con.checksum(ser, 4, offset_mib=2) == pattern_sha256(3, 4)      # the guest went on untouched

    con.close()
    api.stopVirtualMachine(id=vm["id"], forced=True)
    api.revertSnapshot(id=s2["id"])
    api.startVirtualMachine(id=vm["id"])
    con = console(kvm, vm["id"])
    try:
        assert con.checksum(ser, 4) == pattern_sha256(2, 4)                        # s2: seed 2 over 0-4 MiB
        assert con.checksum(ser, 4, offset_mib=4) == sha(pattern_bytes(1, 8)[4 * MIB:])  # and seed 1 beyond
        api.stopVirtualMachine(id=vm["id"], forced=True)
        api.revertSnapshot(id=s3["id"])
        api.startVirtualMachine(id=vm["id"])
        con.close()
        con = console(kvm, vm["id"])
        assert con.checksum(ser, 2) == pattern_sha256(2, 2)
        assert con.checksum(ser, 4, offset_mib=2) == pattern_sha256(3, 4)
        assert con.checksum(ser, 2, offset_mib=6) == sha(pattern_bytes(1, 8)[6 * MIB:])
        assert con.checksum(ser, 16, offset_mib=64) == pattern_sha256(5, 16)     # the writer had finished by s3
    finally:
        con.close()


def test_snapshots_kept_on_primary_of_a_real_guest(kvm):
    """snapshot.backup.to.secondary=false: a live snapshot (QEMU's backup job into a file beside the disk) and an
    idle one (internal) stay on the pool; the internal one is deleted through the running guest's QEMU; a revert
    from primary gives the guest its data back."""
    api, image, local = kvm["api"], kvm["image"], kvm["tmp"] / "local"
    api.updateConfiguration(name="snapshot.backup.to.secondary", value="false")
    vm = api.deployVirtualMachine(zoneid=kvm["zone"]["id"], serviceofferingid=kvm["so"]["id"],
                                  **{"details[0].kernel": str(image / "vmlinuz"),
                                     "details[0].initrd": str(image / "initrd.img"),
                                     "details[0].append": "console=ttyS0 quiet panic=-1"})["virtualmachine"]
    kvm["vms"].append(vm["id"])
    con = console(kvm, vm["id"])
    vol = api.createVolume(name="data", zoneid=kvm["zone"]["id"], diskofferingid=kvm["custom"]["id"], size=1)["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    ser = serial(vol)
    con.write(ser, seed=1, mib=4)
    live = api.createSnapshot(volumeid=vol["id"], name="live")["snapshot"]
    assert (live["state"], live["locationtype"]) == ("BackedUp", "PRIMARY")
    assert (local / f"snap-{live['id']}.qcow2").exists() and not list((kvm["tmp"] / "store").iterdir())
    con.write(ser, seed=2, mib=4)
    con.close()
    api.stopVirtualMachine(id=vm["id"])
    idle = api.createSnapshot(volumeid=vol["id"], name="idle")["snapshot"]
    api.startVirtualMachine(id=vm["id"])
    con = console(kvm, vm["id"])
    try:
        assert con.checksum(ser, 4) == pattern_sha256(2, 4)
        api.deleteSnapshot(id=idle["id"])            # its internal snapshot goes through the guest's QEMU
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(local / vol["path"])], check=True,
                              capture_output=True, text=True).stdout
        assert f"snap-{idle['id']}" not in info
    finally:
        con.close()
    api.stopVirtualMachine(id=vm["id"])
    api.revertSnapshot(id=live["id"])
    api.startVirtualMachine(id=vm["id"])
    con = console(kvm, vm["id"])
    try:
        assert con.checksum(ser, 4) == pattern_sha256(1, 4)
    finally:
        con.close()
