"""Parameters volstack declares are either honoured or refused with a 431 naming them: createSnapshot and
createVMSnapshot quiescevm, createSnapshotPolicy usestoragereplication, listZones/listPods/listClusters
showcapacities, listSnapshots showunique, listIsos bootable. A Simulator zone in memory; the listings (queries)
on SQLite and PostgreSQL, the refusals (made before any query) on SQLite."""
import pytest
from sqlalchemy import select

from test_snapshot_policies import _policy, _sim_dc
from test_templates import error_of
from volstack.db.image_models import ImageStore, Template, TemplateStoreRef
from volstack.db.snapshot_models import Snapshot
from volstack.db.storage_models import StoragePool

@pytest.fixture
def sim(server):
    return _sim_dc(server)


def test_quiesce_replication_and_capacities_are_refused_by_name(sim, server):
    api, root, vm = sim["api"], sim["root"], sim["vm"]
    code, text = error_of(lambda: api.createSnapshot(volumeid=root["id"], quiescevm=True))
    assert code == 431 and "quiescevm=true" in text and "QEMU guest agent" in text and "crash consistent" in text
    code, text = error_of(lambda: api.createVMSnapshot(virtualmachineid=vm["id"], quiescevm=True))
    assert code == 431 and "quiescevm=true" in text and "QEMU guest agent" in text
    assert api.listSnapshots() == {} and api.listVMSnapshot() == {}        # nothing half-made

    code, text = error_of(lambda: _policy(api, root, usestoragereplication=True))
    assert code == 431 and "usestoragereplication=true" in text and "replication" in text
    assert api.listSnapshotPolicies(volumeid=root["id"]) == {}
    assert _policy(api, root, usestoragereplication=False)["volumeid"] == root["id"]      # false: nothing to do


    for command in ("listZones", "listPods", "listClusters"):
        code, text = error_of(lambda: getattr(api, command)(showcapacities=True))
        assert code == 431 and "showcapacities=true" in text and "listStoragePools" in text, command
        assert getattr(api, command)(showcapacities=False)["count"] == 1

    snap = api.createSnapshot(volumeid=root["id"])["snapshot"]
    other = api.createZone(name="z2", networktype="Advanced")["zone"]
    code, text = error_of(lambda: api.deleteSnapshot(id=snap["id"], zoneid=other["id"]))
    assert code == 431 and "is not in zone" in text and api.listSnapshots(id=snap["id"])["count"] == 1

    # listHypervisors zoneid: the zone's clusters'; in-memory lists honour keyword, page and pagesize
    assert [h["name"] for h in api.listHypervisors(zoneid=sim["zone"]["id"])["hypervisor"]] == ["Simulator"]
    assert api.listHypervisors(zoneid=other["id"]) == {}
    assert [h["name"] for h in api.listHypervisors(keyword="kv")["hypervisor"]] == ["KVM"]
    page = api.listHypervisors(page=2, pagesize=1)
    assert page["count"] == 2 and [h["name"] for h in page["hypervisor"]] == ["Simulator"]
    assert api.listStorageProviders(type="primary", keyword="nothing-like-it") == {}

    code, text = error_of(lambda: api.createVolume(name="theirs", zoneid=sim["zone"]["id"],
                                                   diskofferingid=sim["do"]["id"], account="someone-else"))
    assert code == 431 and "for another account (account/domainid)" in text
    assert [v["name"] for v in api.listVolumes(name="theirs").get("volume", [])] == []
    code, text = error_of(lambda: api.createSnapshot(volumeid=root["id"], account="someone-else"))
    assert code == 431 and "belongs to the volume's owner" in text
    code, text = error_of(lambda: api.uploadVolume(name="theirs", zoneid=sim["zone"]["id"], format="QCOW2",
                                                   url="http://10.0.0.9/v.qcow2", account="someone-else"))
    assert code == 431 and "for another account (account/domainid)" in text

    # registerIso imagestoreuuid: the copy goes to that store; a store of another zone is refused
    api.addImageStore(name="images2", provider="NFS", url="nfs://10.0.0.3/images", zoneid=sim["zone"]["id"])
    second = api.listImageStores(name="images2")["imagestore"][0]
    there = api.registerIso(name="there", url="http://10.0.0.9/t.iso", zoneid=sim["zone"]["id"],
                            imagestoreuuid=second["id"])["iso"][0]
    with server.db.session() as s:
        assert [r.store_id for r in s.scalars(select(TemplateStoreRef).join(Template).where(
            Template.uuid == there["id"]))] == [s.scalar(select(ImageStore.id).where(ImageStore.uuid == second["id"]))]
    away = api.addImageStore(name="away", provider="NFS", url="nfs://10.0.0.4/images", zoneid=other["id"])["imagestore"]
    code, text = error_of(lambda: api.registerIso(name="x", url="http://10.0.0.9/x.iso", zoneid=sim["zone"]["id"],
                                                  imagestoreuuid=away["id"]))
    assert code == 431 and "imagestoreuuid" in text and "not a writable store" in text

    code, text = error_of(lambda: api.createTemplate(name="t", volumeid=root["id"], zoneid=other["id"]))
    assert code == 431 and "made in the zone of that volume" in text
    code, text = error_of(lambda: api.createTemplate(name="t", snapshotid=snap["id"],
                                                     isdynamicallyscalable=True))
    assert code == 431 and "isdynamicallyscalable=true" in text
    assert api.listTemplates(templatefilter="self", name="t") == {}

    # listUsers accounttype: 1 (root admin) lists the admin, 0 (user) only the new user
    api.createAccount(accounttype=0, email="u@x", firstname="u", lastname="u", password="pw", username="u1")
    assert [u["username"] for u in api.listUsers(accounttype=0, listall=True)["user"]] == ["u1"]
    assert "u1" not in [u["username"] for u in api.listUsers(accounttype=1, listall=True)["user"]]

    code, text = error_of(lambda: api.extractVolume(id=root["id"], zoneid=sim["zone"]["id"], mode="HTTP_DOWNLOAD",
                                                    url="ftp://10.0.0.9/x"))
    assert code == 431 and "url is the destination of FTP_UPLOAD" in text
    iso = api.registerIso(name="i", url="http://10.0.0.9/i.iso", zoneid=sim["zone"]["id"])["iso"][0]
    code, text = error_of(lambda: api.updateIsoPermissions(id=iso["id"], projectids="0f1e2d3c-4b5a-4968-8776-655443322110"))
    assert code == 431 and "projectids" in text


@pytest.mark.usefixtures("db_url")
def test_listisos_bootable_and_listsnapshots_showunique(sim, server):
    api, zone, root = sim["api"], sim["zone"], sim["root"]
    boot = api.registerIso(name="boot", url="http://10.0.0.9/boot.iso", zoneid=zone["id"])["iso"][0]
    data = api.registerIso(name="data", url="http://10.0.0.9/data.iso", zoneid=zone["id"], bootable=False)["iso"][0]
    assert (boot["bootable"], data["bootable"]) == (True, False)

    def names(**kw):
        return sorted(i["name"] for i in api.listIsos(isofilter="self", **kw).get("iso", []))
    assert names() == ["boot", "data"]
    assert names(bootable=True) == ["boot"] and names(bootable=False) == ["data"]

    snap = api.createSnapshot(volumeid=root["id"], name="s1")["snapshot"]
    assert snap["state"] == "BackedUp" and snap["locationtype"] == "SECONDARY"
    # a backed-up snapshot whose copy on primary is still there (an RBD pool keeps the newest one as the base of
    # the next diff; a file pool when removing it failed)
    with server.db.session() as s:
        row = s.scalar(select(Snapshot).where(Snapshot.uuid == snap["id"]))
        pool = s.scalar(select(StoragePool))
        row.pool_id, row.primary_kind, row.primary_name, pool_uuid = pool.id, "internal", f"snap-{row.uuid}", pool.uuid
        s.commit()

    unique = api.listSnapshots()
    assert unique["count"] == 1 and unique["snapshot"][0]["locationtype"] == "SECONDARY"
    assert api.listSnapshots(showunique=True) == unique
    each = api.listSnapshots(showunique=False)
    assert each["count"] == 2 and {x["id"] for x in each["snapshot"]} == {snap["id"]}
    where = sorted((x["locationtype"], x["datastoretype"], x["datastoreid"]) for x in each["snapshot"])
    assert where == [("PRIMARY", "Primary", pool_uuid), ("SECONDARY", "Image", snap["datastoreid"])]
    page = api.listSnapshots(showunique=False, page=2, pagesize=1)
    assert page["count"] == 2 and len(page["snapshot"]) == 1

    # listVolumes serviceofferingid: the volumes of the service offering's disk offering (the root disk here)
    data = api.createVolume(name="data", zoneid=zone["id"], diskofferingid=sim["do"]["id"])["volume"]
    by_so = api.listVolumes(serviceofferingid=sim["vm"]["serviceofferingid"])
    assert [v["id"] for v in by_so["volume"]] == [root["id"]] and data["id"] != root["id"]
    assert [v["id"] for v in api.listVolumes(serviceofferingid=sim["vm"]["serviceofferingid"],
                                             diskofferingid=sim["do"]["id"])["volume"]] == [data["id"]]
