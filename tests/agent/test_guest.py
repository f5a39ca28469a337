"""A real guest (the project's tiny test kernel under TCG) driven through the agent: disks found by serial,
throttling measured in the guest, hot-plug and acknowledged unplug, live mirror with the data intact."""
import time

import pytest

from guest import GuestConsole, GuestError, guest_image_dir, pattern_sha256

MiB = 1 << 20


def console_of(started) -> GuestConsole:
    con = GuestConsole(started["console"], timeout=60)
    deadline = time.monotonic() + 120
    while True:                          # the guest may still be booting: ping until it answers
        try:
            con.ping(timeout=2)
            return con
        except (TimeoutError, GuestError):     # lines typed while it boots may arrive mangled
            if time.monotonic() >= deadline:
                raise


@pytest.mark.slow
def test_guest_sees_disks_by_serial_and_feels_the_qos(agent, pool, pool2):
    image = guest_image_dir()
    c = agent.client
    c.call("volume_create", pool=pool, name="data", size=64 * MiB, format="raw")
    data = {"pool": pool, "name": "data", "format": "raw", "serial": "DATA-1", "device_id": 1,
            "qos": {"bps_wr": 2 * MiB}}
    vm = c.call("vm_start", name="g1", memory_mb=128, cpus=1, kernel=str(image / "vmlinuz"),
                initrd=str(image / "initrd.img"), append="console=ttyS0 quiet panic=-1", disks=[data])
    assert vm["accel"] == "tcg" and vm["state"] == "Running"
    con = console_of(vm)
    try:
        assert con.disks()["DATA-1"][1] == 64 * MiB

        throttled = con.bench_write("DATA-1", 4)
        assert throttled.seconds >= 1.2, f"4 MiB at 2 MiB/s took {throttled.seconds:.2f} s"
        c.call("disk_set_qos", vm="g1", serial="DATA-1", qos={})
        free = con.bench_write("DATA-1", 4)
        assert free.seconds < throttled.seconds / 3
        stats = c.call("disk_stats", vm="g1")["disks"]["DATA-1"]
        assert stats["wr_bytes"] >= 8 * MiB and stats["wr_ops"] >= 8

        c.call("volume_create", pool=pool, name="extra", size=16 * MiB, format="qcow2")
        c.call("disk_attach", vm="g1", disk={"pool": pool, "name": "extra", "format": "qcow2", "serial": "EXTRA-1",
                                              "device_id": 2})
        con.dev("EXTRA-1")
        con.write("EXTRA-1", seed=7, mib=4)
        task = c.call_async("volume_mirror", vm="g1", serial="EXTRA-1", dst_pool=pool2, dst_name="extra-moved",
                            format="qcow2")
        con.write("EXTRA-1", seed=9, mib=2, offset_mib=8)        # the guest keeps writing meanwhile
        c.wait_task(task)
        assert con.checksum("EXTRA-1", 4) == pattern_sha256(7, 4)
        assert con.checksum("EXTRA-1", 2, offset_mib=8) == pattern_sha256(9, 2)
        assert c.call("vm_list")["vms"][0]["disks"] == ["DATA-1", "EXTRA-1"]

        assert c.call("disk_detach", vm="g1", serial="EXTRA-1") == {}     # returns once the guest let go
        assert set(con.disks()) == {"DATA-1"}
        assert c.call("volume_delete", pool=pool2, name="extra-moved") == {}
    finally:
        con.close()
        assert c.call("vm_stop", name="g1", forced=True) == {"forced": True}
    assert c.call("vm_list")["vms"][0]["state"] == "Stopped"
