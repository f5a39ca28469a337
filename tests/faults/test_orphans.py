"""Deliver 3 of issue 12: the orphan scan reports files on pools and image stores that belong to nothing, and
removes them once unclaimed past storage.orphan.grace.period; files the database names are never touched."""
import subprocess

from tests.test_migration_settle import _detached_volume
from tests.test_templates import add_store, cloud  # noqa: F401  (cloud is a fixture)
from volstack.services import orphans
from volstack.services.context import system_context


def _events(api, kind):
    return [e["description"] for e in api.listEvents(type=kind, listall=True).get("event", [])]


def test_orphan_scan_reports_then_removes_only_unclaimed_files(cloud):
    api, server, tmp = cloud["api"], cloud["server"], cloud["tmp"]
    add_store(cloud)
    vol, _ = _detached_volume(cloud)
    snap = api.createSnapshot(volumeid=vol["id"])["snapshot"]
    primary, store = tmp / "primary", tmp / "store"
    kept = sorted(p.name for p in primary.iterdir()) + sorted(p.name for p in store.iterdir())
    for f in (primary / "stray-volume", store / "0b5e4c1e-orphan-backup.qcow2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(f), "1M"], check=True)
    (primary / f".{vol['path']}.revert.part").write_bytes(b"partial")

    api.updateConfiguration(name="storage.orphan.grace.period", value="3600")
    found = orphans.scan(server.db, system_context(), now=1000.0)
    assert sorted(n for _, n in found["orphans"]) == sorted(["stray-volume", "0b5e4c1e-orphan-backup.qcow2",
                                                             f".{vol['path']}.revert.part"])
    assert found["removed"] == []
    assert len([d for d in _events(api, "ORPHAN.FILE") if "no volume, template, snapshot or transfer" in d]) == 3
    orphans.scan(server.db, system_context(), now=2000.0)            # reported once, not every pass
    assert len(_events(api, "ORPHAN.FILE")) == 3

    gone = orphans.scan(server.db, system_context(), now=1000.0 + 3600)   # past the grace period
    assert sorted(n for _, n in gone["removed"]) == sorted(n for _, n in found["orphans"])
    assert sorted(p.name for p in primary.iterdir()) + sorted(p.name for p in store.iterdir()) == kept
    assert api.listSnapshots(id=snap["id"])["snapshot"][0]["state"] == "BackedUp"
    assert len(_events(api, "ORPHAN.REMOVE")) == 3
