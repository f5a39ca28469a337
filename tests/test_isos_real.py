"""ISOs on real QEMU through the API: a VM deployed from a bootable ISO (scripts/build-iso.sh) boots its blank
ROOT disk's guest from the CD, the CD changes while it runs, and a live migration to a second host keeps it."""
import pytest

from agentproc import AgentProcess
from guest import GuestConsole
from support import add_datacenter, client
from test_isos import iso_bytes, register_iso  # noqa: F401
from test_templates import allow_loopback, web  # noqa: F401

pytestmark = pytest.mark.slow


def on_host(agent, vm_id):
    return next(v for v in agent.client.call("vm_list")["vms"] if v["name"] == vm_id)


def cd(agent, vm_id):
    from volstack.agent.qmp import Qmp
    with Qmp(on_host(agent, vm_id)["monitor"]) as q:
        return next(b for b in q.execute("query-block") if b["qdev"] == "cd0")


def test_boot_from_an_iso_change_the_cd_live_and_migrate_with_it(server, tmp_path, web, iso_bytes):  # noqa: F811
    agents = [AgentProcess(tmp_path / f"agent{i}", name=f"kvm{i}").start() for i in (1, 2)]
    try:
        api = client(server)
        dc = add_datacenter(api, "iz", "ip", "ic", agents)
        zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
        hosts = dc["hosts"]
        for d in ("store", "shared"):
            (tmp_path / d).mkdir()
        api.addImageStore(name="store", provider="Filesystem", url=f"file://{tmp_path / 'store'}", zoneid=zone["id"])
        api.createStoragePool(name="shared", url=f"SharedMountPoint://localhost{tmp_path / 'shared'}",
                              zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"])
        so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=128, displaytext="s")["serviceoffering"]
        custom = api.createDiskOffering(name="custom", customized=True, displaytext="c")["diskoffering"]
        allow_loopback(api)
        iso = register_iso({"api": api, "zone": zone}, web, iso_bytes, "tiny")
        assert iso["isready"] is True, iso

        vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"], templateid=iso["id"],
                                      diskofferingid=custom["id"], size=1, hostid=hosts[0]["id"])["virtualmachine"]
        assert vm["state"] == "Running" and vm["isoid"] == iso["id"]
        con = GuestConsole(on_host(agents[0], vm["id"])["console"], timeout=60)
        con.ping_until_ready(timeout=120)                      # BIOS -> ISOLINUX on the CD -> the tiny guest
        assert con.run("sh", "echo", "from-the-cd", timeout=30) == ["from-the-cd"]
        assert cd(agents[0], vm["id"])["inserted"]["file"].endswith(f"/tmpl-{iso['id']}")

        api.detachIso(virtualmachineid=vm["id"])
        assert "inserted" not in cd(agents[0], vm["id"])
        api.attachIso(id=iso["id"], virtualmachineid=vm["id"])
        assert cd(agents[0], vm["id"])["inserted"]["ro"] is True

        moved = api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=hosts[1]["id"])["virtualmachine"]
        assert moved["hostid"] == hosts[1]["id"] and moved["isoid"] == iso["id"]
        assert cd(agents[1], vm["id"])["inserted"]["file"].endswith(f"/tmpl-{iso['id']}")
        con = GuestConsole(on_host(agents[1], vm["id"])["console"], timeout=60)
        assert con.run("sh", "echo", "still-here", timeout=30) == ["still-here"]
        api.destroyVirtualMachine(id=vm["id"], expunge=True)
    finally:
        for a in agents:
            a.kill_guests()
            a.stop()
