"""The CD-ROM drive every guest has (agent/cdrom.py): an ISO at start, changed live, kept by a live migration,
and a real boot from a real ISO (scripts/build-iso.sh) under TCG."""
import shutil
import subprocess
from pathlib import Path

import pytest

from volstack import errors
from volstack.agent.qmp import Qmp

from agentproc import ROOT
from test_qemu import disk

MiB = 1 << 20


@pytest.fixture(scope="module")
def iso_image():
    return subprocess.run([str(ROOT / "scripts" / "build-iso.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()


def medium(pool, name):
    return {"pool": pool, "name": name}


def cdrom(vm):
    """The CD drive's query-block entry, through the VM's second monitor."""
    with Qmp(vm["monitor"]) as q:
        return next(b for b in q.execute("query-block") if b["qdev"] == "cd0")


def test_an_iso_at_start_changed_live_and_protected_while_inserted(agent, pool, iso_image):
    c = agent.client
    shutil.copy(iso_image, Path(pool["path"]) / "tmpl-iso")
    shutil.copy(iso_image, Path(pool["path"]) / "tmpl-iso2")
    c.call("volume_create", pool=pool, name="root", size=64 * MiB, format="qcow2")
    with pytest.raises(errors.NotFound, match="ISO image nosuch does not exist"):
        c.call("vm_start", name="cd1", memory_mb=64, cpus=1, disks=[disk(pool, "root", "ROOT-1", 0)],
               cdrom=medium(pool, "nosuch"))
    vm = c.call("vm_start", name="cd1", memory_mb=64, cpus=1, disks=[disk(pool, "root", "ROOT-1", 0)],
                cdrom=medium(pool, "tmpl-iso"))
    assert vm["cdrom"] == "tmpl-iso"
    cd = cdrom(vm)
    assert cd["inserted"]["ro"] is True and cd["inserted"]["file"].endswith("/tmpl-iso") and not cd["tray_open"]
    with pytest.raises(errors.ResourceInUse, match="attached to running VM cd1"):
        c.call("volume_delete", pool=pool, name="tmpl-iso")
    assert c.call("cdrom_eject", vm="cd1") == {"cdrom": None}
    assert "inserted" not in cdrom(vm) and not cdrom(vm)["tray_open"]
    c.call("volume_delete", pool=pool, name="tmpl-iso")            # nobody holds it any more
    assert c.call("cdrom_insert", vm="cd1", medium=medium(pool, "tmpl-iso2")) == {"cdrom": "tmpl-iso2"}
    assert c.call("cdrom_insert", vm="cd1", medium=medium(pool, "tmpl-iso2")) == {"cdrom": "tmpl-iso2"}  # idempotent
    assert cdrom(vm)["inserted"]["file"].endswith("/tmpl-iso2")
    assert c.call("vm_list")["vms"][0]["cdrom"] == "tmpl-iso2"
    with pytest.raises(errors.InvalidParameter, match="cdrom must be"):
        c.call("vm_start", name="cd2", memory_mb=64, cpus=1, disks=[], cdrom="tmpl-iso2")


def test_the_cd_travels_with_a_live_migration(make_agent, pool, iso_image):
    src, dst = make_agent("qemu", "csrc"), make_agent("qemu", "cdst")
    shutil.copy(iso_image, Path(pool["path"]) / "tmpl-iso")
    src.client.call("volume_create", pool=pool, name="root", size=64 * MiB, format="qcow2")
    src.client.call("vm_start", name="mcd", memory_mb=64, cpus=1, disks=[disk(pool, "root", "ROOT-1", 0)])
    src.client.call("cdrom_insert", vm="mcd", medium=medium(pool, "tmpl-iso"))        # hot, after the start
    spec = src.client.call("vm_migrate_spec", name="mcd")
    assert spec["spec"]["cdrom"] == medium(pool, "tmpl-iso")
    uri = dst.client.call("vm_migrate_prepare", vm=spec["spec"], address="127.0.0.1")["uri"]
    src.client.wait_task(src.client.call_async("vm_migrate", name="mcd", uri=uri))
    arrived = dst.client.call("vm_migrate_finish", name="mcd", resume=False)
    src.client.call("vm_destroy", name="mcd")
    assert arrived["cdrom"] == "tmpl-iso" and cdrom(arrived)["inserted"]["file"].endswith("/tmpl-iso")
    dst.client.call("cdrom_eject", vm="mcd")
    assert "inserted" not in cdrom(arrived)


def test_simulated_guests_keep_their_cd(sim_agent, pool):
    c = sim_agent.client
    (Path(pool["path"]) / "tmpl-iso").write_bytes(b"\0" * 4096)
    vm = c.call("vm_start", name="s1", memory_mb=64, cpus=1, disks=[], cdrom=medium(pool, "tmpl-iso"), boot="cdrom")
    assert vm["cdrom"] == "tmpl-iso"
    with pytest.raises(errors.ResourceInUse):
        c.call("volume_delete", pool=pool, name="tmpl-iso")
    assert c.call("vm_migrate_spec", name="s1")["spec"]["cdrom"] == medium(pool, "tmpl-iso")
    c.call("cdrom_eject", vm="s1")
    assert c.call("vm_list")["vms"][0]["cdrom"] is None


@pytest.mark.slow
def test_a_blank_disk_boots_from_the_iso_and_the_cd_changes_while_it_runs(agent, pool, iso_image):
    """boot=cdrom: BIOS -> ISOLINUX on the CD -> the tiny guest, with an empty root disk after it in boot order."""
    from guest import GuestConsole
    c = agent.client
    shutil.copy(iso_image, Path(pool["path"]) / "tmpl-iso")
    c.call("volume_create", pool=pool, name="root", size=64 * MiB, format="qcow2")
    vm = c.call("vm_start", name="boot1", memory_mb=128, cpus=1, boot="cdrom",
                disks=[disk(pool, "root", "ROOT-1", 0)], cdrom=medium(pool, "tmpl-iso"))
    con = GuestConsole(vm["console"], timeout=60)
    con.ping_until_ready(timeout=120)
    assert con.run("sh", "echo", "booted-from-cd", timeout=30) == ["booted-from-cd"]
    c.call("cdrom_eject", vm="boot1")
    assert "inserted" not in cdrom(vm)
    c.call("cdrom_insert", vm="boot1", medium=medium(pool, "tmpl-iso"))
    assert cdrom(vm)["inserted"]["image"]["format"] == "raw"
    assert con.run("sh", "echo", "still-running", timeout=30) == ["still-running"]
