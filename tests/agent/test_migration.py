"""Live migration between two qemu agents on real QEMU (guest-less VMs), step by step as the management
server drives it: spec on the source, prepare on the destination, migrate, finish, source copy dropped."""
import pytest

from volstack import errors
from volstack.agent.qmp import Qmp

from test_qemu import QOS, blocks, disk

MiB = 1 << 20


@pytest.fixture
def pair(make_agent, pool):
    src, dst = make_agent("qemu", "src"), make_agent("qemu", "dst")
    c = src.client
    for name, size in (("root", 64 * MiB), ("data", 32 * MiB), ("late", 16 * MiB)):
        c.call("volume_create", pool=pool, name=name, size=size, format="qcow2")
    c.call("vm_start", name="mvm", uuid="5d0d4c3e-2b1a-4f9e-8d7c-6b5a4f3e2d1c", memory_mb=64, cpus=1,
           disks=[disk(pool, "root", "ROOT-1", 0), disk(pool, "data", "DATA-1", 1, qos=QOS)])
    # hot-plug and unplug so that the slots are not simply 0, 1, 2 in device order
    c.call("disk_attach", vm="mvm", disk=disk(pool, "late", "LATE-1", 2))
    c.call("disk_detach", vm="mvm", serial="DATA-1")
    c.call("disk_attach", vm="mvm", disk=disk(pool, "data", "DATA-1", 1, qos=QOS))
    return src, dst


def test_migrate_keeps_devices_slots_and_qos(pair):
    src, dst = pair
    before = {serial: (b["qdev"], b["inserted"]["iops_wr"]) for serial, b in
              blocks(next(v for v in src.client.call("vm_list")["vms"])).items()}
    spec = src.client.call("vm_migrate_spec", name="mvm")
    assert spec["running"] is False                     # guest-less VMs stay paused, on both sides
    uri = dst.client.call("vm_migrate_prepare", vm=spec["spec"], address="127.0.0.1")["uri"]
    assert uri.startswith("tcp:127.0.0.1:")
    assert dst.client.call("vm_migrate_prepare", vm=spec["spec"], address="127.0.0.1")["uri"] == uri  # idempotent
    assert dst.client.call("vm_list")["vms"][0]["state"] == "Incoming"
    task = src.client.call_async("vm_migrate", name="mvm", uri=uri)
    assert src.client.wait_task(task) == {"resume": False}
    arrived = dst.client.call("vm_migrate_finish", name="mvm", resume=False)
    assert arrived["state"] == "Running" and set(arrived["disks"]) == {"ROOT-1", "DATA-1", "LATE-1"}
    after = {serial: (b["qdev"], b["inserted"]["iops_wr"]) for serial, b in blocks(arrived).items()}
    assert after == before, "same devices in the same slots with the same throttling"
    with Qmp(arrived["monitor"]) as q:
        assert q.execute("query-status")["status"] == "prelaunch"
    src.client.call("vm_destroy", name="mvm")
    assert src.client.call("vm_list") == {"vms": []}
    # the guest is fully usable where it arrived: hot-unplug works there
    dst.client.call("disk_detach", vm="mvm", serial="LATE-1")


def test_a_failed_migration_keeps_the_guest_on_the_source(pair):
    src, dst = pair
    spec = src.client.call("vm_migrate_spec", name="mvm")
    dst.client.call("vm_migrate_prepare", vm=spec["spec"], address="127.0.0.1")
    task = src.client.call_async("vm_migrate", name="mvm", uri="tcp:127.0.0.1:1")     # nobody listens there
    with pytest.raises(errors.CloudError) as e:
        src.client.wait_task(task)
    assert "keeps running here" in e.value.text
    assert src.client.call("vm_list")["vms"][0]["state"] == "Running"
    dst.client.call("vm_migrate_abort", name="mvm")
    assert dst.client.call("vm_list") == {"vms": []}
    src.client.call("vm_migrate_resume", name="mvm")
    assert src.client.call("disk_stats", vm="mvm")["disks"].keys() == {"ROOT-1", "DATA-1", "LATE-1"}


def test_abort_refuses_a_guest_that_runs_and_prepare_checks_its_input(pair):
    src, dst = pair
    with pytest.raises(errors.CloudError) as e:
        src.client.call("vm_migrate_abort", name="mvm")
    assert "not an unfinished incoming migration" in e.value.text
    spec = src.client.call("vm_migrate_spec", name="mvm")["spec"]
    bad = {**spec, "disks": [{**d, "slot": 0} for d in spec["disks"]]}
    with pytest.raises(errors.InvalidParameter):
        dst.client.call("vm_migrate_prepare", vm=bad, address="127.0.0.1")
    with pytest.raises(errors.InvalidParameter):
        dst.client.call("vm_migrate_prepare", vm=spec, address="127.0.0.1:80")
    assert dst.client.call("vm_list") == {"vms": []}


def test_an_agent_restart_mid_migration_cancels_it_and_the_guest_stays(pair):
    src, dst = pair
    spec = src.client.call("vm_migrate_spec", name="mvm")
    uri = dst.client.call("vm_migrate_prepare", vm=spec["spec"], address="127.0.0.1")["uri"]
    task = src.client.call_async("vm_migrate", name="mvm", uri=uri, speed=1024)      # 1 KiB/s: still going
    vm = src.client.call("vm_list")["vms"][0]

    def migrating():
        with Qmp(vm["monitor"]) as q:
            return q.execute("query-migrate").get("status") == "active"
    from agentproc import wait_until
    wait_until("the migration to be under way", migrating, timeout=30)
    src.restart()                                       # SIGKILL: the task dies with the agent
    with pytest.raises(errors.CloudError) as e:
        src.client.wait_task(task)
    assert "agent restarted" in e.value.text

    def settled():
        with Qmp(vm["monitor"]) as q:
            return q.execute("query-migrate").get("status") in ("cancelled", "failed")
    wait_until("the migration to be cancelled", settled, timeout=30)
    assert src.client.call("vm_list")["vms"][0]["state"] == "Running"
    dst.client.call("vm_migrate_abort", name="mvm")
    assert dst.client.call("vm_list") == {"vms": []}
    with Qmp(vm["monitor"]) as q:
        assert q.execute("query-status")["status"] == "prelaunch", "the guest is as it was on the source"


@pytest.mark.slow
def test_a_guest_booted_from_its_root_disk_migrates_running(make_agent, pool):
    """A VM from a template (boot=disk: BIOS -> SYSLINUX -> kernel) keeps its boot device and keeps running."""
    import shutil
    import subprocess
    from pathlib import Path

    from guest import GuestConsole
    from support import ROOT
    image = subprocess.run([str(ROOT / "scripts" / "build-template.sh")], check=True, capture_output=True,
                           text=True).stdout.strip()
    shutil.copy(image, Path(pool["path"]) / "root")
    src, dst = make_agent("qemu", "bsrc"), make_agent("qemu", "bdst")
    vm = src.client.call("vm_start", name="bvm", memory_mb=128, cpus=1, boot="disk",
                         disks=[disk(pool, "root", "ROOT-B", 0)])
    GuestConsole(vm["console"], timeout=60).ping_until_ready(timeout=120)
    spec = src.client.call("vm_migrate_spec", name="bvm")
    assert spec["running"] is True and spec["spec"]["boot"] == "disk"
    uri = dst.client.call("vm_migrate_prepare", vm=spec["spec"], address="127.0.0.1")["uri"]
    src.client.wait_task(src.client.call_async("vm_migrate", name="bvm", uri=uri))
    arrived = dst.client.call("vm_migrate_finish", name="bvm", resume=True)
    assert arrived["state"] == "Running"
    src.client.call("vm_destroy", name="bvm")
    con = GuestConsole(arrived["console"], timeout=60)
    assert con.run("sh", "echo", "still-here", timeout=30) == ["still-here"]
    dst.client.call("vm_destroy", name="bvm")
