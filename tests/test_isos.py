"""ISOs in guests through the API (attachIso, detachIso, deploy from an ISO, deleteIso while attached) and
the registration-time checksum check of direct-download templates, with a real `volstack agent` (simulated
guests, real storage) and a real HTTP server for the sources."""
import hashlib
import json
import subprocess
from datetime import timedelta

import pytest
from sqlalchemy import update

from agentproc import wait_until
from support import ROOT
from test_templates import add_store, allow_loopback, cloud, error_of, qemu_bytes, wait_template, web  # noqa: F401


@pytest.fixture(scope="module")
def iso_bytes():
    path = subprocess.run([str(ROOT / "scripts" / "build-iso.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()
    with open(path, "rb") as f:
        return f.read()


def register_iso(c, web, data, name="tiny-iso", **kw):
    url = web.add(f"/{name}.iso", data=data)
    iso = c["api"].registerIso(name=name, url=url, zoneid=c["zone"]["id"], ispublic=True, **kw)["iso"][0]
    def settled():
        got = c["api"].listIsos(isofilter="all", id=iso["id"])["iso"][0]
        busy = got["status"].endswith("Downloaded") or got["status"] in ("Processing", "Installing ISO")
        return got if got["isready"] or not busy else None
    return wait_until(f"ISO {name} to finish downloading", settled, timeout=60, interval=0.1)


def guest(c, vm_id):
    """What the simulated hypervisor holds for the VM (its state file: CD medium and boot order)."""
    return json.loads((c["tmp"] / "agent" / "simulator.json").read_text())[vm_id]


@pytest.fixture
def isos(cloud, web, iso_bytes):       # noqa: F811
    add_store(cloud)
    allow_loopback(cloud["api"])
    a = register_iso(cloud, web, iso_bytes, "a")
    b = register_iso(cloud, web, iso_bytes, "b")
    assert a["isready"] and a["status"] == "Successfully Installed" and a["bootable"] is True
    custom = cloud["api"].createDiskOffering(name="custom", customized=True, displaytext="c")["diskoffering"]
    return dict(cloud, a=a, b=b, custom=custom)


def test_attach_detach_one_iso_per_vm_live_and_stopped(isos):
    c, api = isos, isos["api"]
    vm = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"],
                                  rootdisksize=1)["virtualmachine"]
    assert "isoid" not in vm
    code, text = error_of(lambda: api.detachIso(virtualmachineid=vm["id"]))
    assert code == 431 and "has no ISO attached" in text

    # a running guest gets the ISO in its CD drive at once, from one raw copy cached on the pool
    vm = api.attachIso(id=c["a"]["id"], virtualmachineid=vm["id"])["virtualmachine"]
    assert (vm["isoid"], vm["isoname"], vm["isodisplaytext"]) == (c["a"]["id"], "a", "a")
    copy = c["tmp"] / "primary" / f"tmpl-{c['a']['id']}"
    assert guest(c, vm["id"])["cdrom"]["name"] == copy.name
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(copy)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["format"] == "raw"
    assert [v["id"] for v in api.listVirtualMachines(isoid=c["a"]["id"])["virtualmachine"]] == [vm["id"]]

    # one ISO per VM: a second attach is refused unless forced, which replaces it
    code, text = error_of(lambda: api.attachIso(id=c["b"]["id"], virtualmachineid=vm["id"]))
    assert code == 431 and "already has ISO a attached" in text and "forced=true" in text
    vm = api.attachIso(id=c["b"]["id"], virtualmachineid=vm["id"], forced=True)["virtualmachine"]
    assert vm["isoid"] == c["b"]["id"] and guest(c, vm["id"])["cdrom"]["name"] == f"tmpl-{c['b']['id']}"

    vm = api.detachIso(virtualmachineid=vm["id"])["virtualmachine"]
    assert "isoid" not in vm and guest(c, vm["id"])["cdrom"] is None

    # a stopped VM records the ISO and starts with it in the drive, first in boot order
    api.stopVirtualMachine(id=vm["id"])
    vm = api.attachIso(id=c["a"]["id"], virtualmachineid=vm["id"])["virtualmachine"]
    assert vm["isoid"] == c["a"]["id"] and vm["state"] == "Stopped"
    api.startVirtualMachine(id=vm["id"])
    assert guest(c, vm["id"])["cdrom"]["name"] == copy.name and guest(c, vm["id"])["boot"] == "cdrom"


def test_deploy_from_an_iso_boots_a_blank_root_disk_from_the_cd(isos):
    c, api = isos, isos["api"]
    code, text = error_of(lambda: api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"],
                                                           templateid=c["a"]["id"]))
    assert code == 431 and "requires a disk offering for the root disk" in text
    vm = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"], templateid=c["a"]["id"],
                                  diskofferingid=c["custom"]["id"], size=2)["virtualmachine"]
    assert vm["templateid"] == c["a"]["id"] and vm["isoid"] == c["a"]["id"]
    vols = api.listVolumes(virtualmachineid=vm["id"])["volume"]
    assert [(v["type"], v["size"], v["diskofferingid"]) for v in vols] == [("ROOT", 2 * 2 ** 30, c["custom"]["id"])]
    assert "templateid" not in vols[0]           # blank: nothing cloned
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(c["tmp"] / "primary" / vols[0]["path"])],
                                     check=True, capture_output=True, text=True).stdout)
    assert "backing-filename" not in info and info["virtual-size"] == 2 * 2 ** 30
    g = guest(c, vm["id"])
    assert g["boot"] == "cdrom" and g["cdrom"]["name"] == f"tmpl-{c['a']['id']}"
    # once the ISO is out, the installed root disk boots
    api.detachIso(virtualmachineid=vm["id"])
    api.rebootVirtualMachine(id=vm["id"])
    api.stopVirtualMachine(id=vm["id"])
    api.startVirtualMachine(id=vm["id"])
    assert guest(c, vm["id"])["boot"] == "disk" and guest(c, vm["id"])["cdrom"] is None


def test_an_attached_iso_is_not_deleted_nor_its_cached_copy_collected(isos):
    from volstack.db.image_models import TemplatePoolRef
    from volstack.db.models import utcnow
    from volstack.services import template_cache
    from volstack.services.context import system_context
    c, api, db = isos, isos["api"], isos["server"].db
    vm = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"],
                                  rootdisksize=1)["virtualmachine"]
    api.attachIso(id=c["a"]["id"], virtualmachineid=vm["id"])
    copy = c["tmp"] / "primary" / f"tmpl-{c['a']['id']}"
    code, text = error_of(lambda: api.deleteIso(id=c["a"]["id"]))
    assert code == 431 and f"attached to virtual machine(s) {vm['name']}" in text and "detachIso" in text
    with db.session() as s:             # unused for longer than the cleanup's grace: only the attachment keeps it
        s.execute(update(TemplatePoolRef).values(last_used=utcnow() - timedelta(days=1)))
    assert template_cache.cleanup(db, system_context()) == 0 and copy.exists()
    api.stopVirtualMachine(id=vm["id"])                                   # still attached while stopped
    assert template_cache.cleanup(db, system_context()) == 0 and copy.exists()
    api.detachIso(virtualmachineid=vm["id"])
    api.deleteIso(id=c["a"]["id"])
    assert template_cache.cleanup(db, system_context()) == 1 and not copy.exists()
    code, text = error_of(lambda: api.attachIso(id=c["a"]["id"], virtualmachineid=vm["id"]))
    assert code == 431


def test_attach_refuses_an_iso_that_is_not_ready(isos, web):
    c, api = isos, isos["api"]
    broken = register_iso(c, web, b"not an iso" * 1000, "broken")
    assert broken["isready"] is False and "ISO" in broken["status"]
    vm = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"],
                                  rootdisksize=1)["virtualmachine"]
    code, text = error_of(lambda: api.attachIso(id=broken["id"], virtualmachineid=vm["id"]))
    assert code == 431 and "ISO broken is not ready in zone tz" in text
    code, text = error_of(lambda: api.attachIso(id=vm["id"], virtualmachineid=vm["id"]))
    assert code == 431


# ---------------------------------------------------------------- direct download: the checksum at registration

def wait_checked(api, tid, timeout=60):
    def checked():
        t = api.listTemplates(templatefilter="all", id=tid)["template"][0]
        return None if t["status"].startswith("Checking") else t
    return wait_until(f"the checksum check of template {tid}", checked, timeout=timeout)


def test_direct_download_checksum_is_verified_at_registration(cloud, web):      # noqa: F811
    api, tmp = cloud["api"], cloud["tmp"]
    allow_loopback(api)
    data = qemu_bytes(tmp, "dd.qcow2", 1, fill=0x64)
    url = web.add("/dd.qcow2", data=data)
    good = "{SHA-256}" + hashlib.sha256(data).hexdigest()
    t = api.registerTemplate(name="dd", url=url, format="QCOW2", hypervisor="KVM", zoneid=cloud["zone"]["id"],
                             directdownload=True, checksum=good)["template"][0]
    assert t["isready"] is False and t["status"].startswith("Checking the checksum")    # registration stays fast
    t = wait_checked(api, t["id"])
    assert t["isready"] is True and t["status"] == "Bypassed Secondary Storage", t
    assert [r for r in web.requests if r[0] == "GET" and r[1] == "/dd.qcow2" and r[3] == 200]   # really fetched
    assert [p.name for p in (tmp / "primary").iterdir()] == []                          # but nothing stored
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  templateid=t["id"])["virtualmachine"]
    assert vm["state"] == "Running"

    # a wrong checksum ends in an error state with the reason, and deploys are refused with it
    bad = "{SHA-256}" + "0" * 64
    t = api.registerTemplate(name="dd-bad", url=url, format="QCOW2", hypervisor="KVM", zoneid=cloud["zone"]["id"],
                             directdownload=True, checksum=bad)["template"][0]
    t = wait_checked(api, t["id"])
    assert t["isready"] is False and "checksum mismatch" in t["status"] and "0" * 64 in t["status"], t
    code, text = error_of(lambda: api.deployVirtualMachine(zoneid=cloud["zone"]["id"], templateid=t["id"],
                                                           serviceofferingid=cloud["so"]["id"], rootdisksize=1))
    assert code == 431 and "Template dd-bad cannot be used" in text and "checksum mismatch" in text
    assert [x["name"] for x in api.listTemplates(templatefilter="all", isready=True).get("template", [])] == ["dd"]
    # a source that is gone is still refused at once, with nothing recorded
    gone = web.add("/gone.qcow2", data=data, fail="404")
    code, text = error_of(lambda: api.registerTemplate(name="dd-gone", url=gone, format="QCOW2", hypervisor="KVM",
                                                       zoneid=cloud["zone"]["id"], directdownload=True, checksum=good))
    assert code == 431 and "404" in text
    assert len(api.listTemplates(templatefilter="all")["template"]) == 2


def test_a_direct_download_iso_is_checked_then_fetched_straight_into_the_pool(cloud, web, iso_bytes):  # noqa: F811
    api, tmp = cloud["api"], cloud["tmp"]
    allow_loopback(api)
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  rootdisksize=1)["virtualmachine"]
    # paced to 4 MiB/s, the check of the 16 MB ISO lasts seconds: long enough to be seen under way
    url = web.add("/dd.iso", data=iso_bytes, rate=4 << 20)
    iso = api.registerIso(name="dd-iso", url=url, zoneid=cloud["zone"]["id"], directdownload=True,
                          checksum="{SHA-512}" + hashlib.sha512(iso_bytes).hexdigest())["iso"][0]
    code, text = error_of(lambda: api.attachIso(id=iso["id"], virtualmachineid=vm["id"]))
    assert code == 431 and "ISO dd-iso is still being checked against its checksum" in text

    def checked():          # until it is ready, it is being checked
        listed = api.listIsos(isofilter="all", id=iso["id"])["iso"][0]
        assert listed["isready"] or listed["status"].startswith("Checking the checksum"), listed
        return listed["isready"]
    wait_until("the checksum check of ISO dd-iso", checked, timeout=60)
    web.add("/dd.iso", data=iso_bytes)                                        # full speed for the fetch itself
    vm = api.attachIso(id=iso["id"], virtualmachineid=vm["id"])["virtualmachine"]
    assert vm["isoid"] == iso["id"]
    assert (tmp / "primary" / f"tmpl-{iso['id']}").read_bytes() == iso_bytes      # never touched an image store
