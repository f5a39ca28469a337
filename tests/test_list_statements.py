"""A list page costs a fixed number of SQL statements whatever its size (issue 14): each referenced model is
read once per page (api/views.py Lookups), never once per row. On SQLite and PostgreSQL, with volumes, VMs,
snapshots, VM snapshots, templates, accounts, jobs and events present."""
import itertools
import os

import pytest

from sqlcount import RequestStatements
from support import add_datacenter, client, start_server
from volstack.api.registry import API

GIB = 2 ** 30
ROWS = 6
MAX_STATEMENTS = 11          # listVolumesMetrics as admin: 10 referenced models and the tags
# Required parameters, and commands whose rows are not database rows of their own (shown for completeness).
ARGS = {"listTemplates": {"templatefilter": "all"}, "listIsos": {"isofilter": "all"},
        "listStorageProviders": {"type": "primary"}, "listResourceDetails": {"resourcetype": "Volume"}}
USER_ARGS = {"listTemplates": {"templatefilter": "self"}, "listIsos": {"isofilter": "self"},
             "listResourceDetails": {"resourcetype": "Volume"}}
SKIP = {"listApis", "listCapabilities", "findHostsForMigration", "findStoragePoolsForMigration",
        "listImageStoreObjects", "listStoragePoolObjects", "listVolumesForImport", "listIsoPermissions",
        "listTemplatePermissions", "revokeTemplateDirectDownloadCertificate", "updateResourceCount"}


def _seed(ms):
    api = client(ms)
    dc = add_datacenter(api, "qz", "qp", "qc", ["http://simq"])
    zone = dc["zone"]["id"]
    api.createStoragePool(name="p1", url="nfs://10.0.0.1/p1", **dc["at"], capacitybytes=1000 * GIB)
    api.addImageStore(name="sec", provider="NFS", url="nfs://10.0.0.1/sec", zoneid=zone)
    do = api.createDiskOffering(name="d1", disksize=1)["diskoffering"]
    so = api.createServiceOffering(name="s1", cpunumber=1, cpuspeed=500, memory=256, displaytext="s1")["serviceoffering"]
    dom = api.createDomain(name="sub")["domain"]
    users = []
    for name in ("ann", "ben"):
        acc = api.createAccount(username=name, password="pw-" + name, accounttype=0, domainid=dom["id"])["account"]
        keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
        users.append(client(ms, keys["apikey"], keys["secretkey"]))
    for i in range(ROWS):
        user = users[i % 2]
        vm = user.deployVirtualMachine(zoneid=zone, serviceofferingid=so["id"], rootdisksize=1, name=f"vm{i}")["virtualmachine"]
        vol = user.createVolume(name=f"v{i}", zoneid=zone, diskofferingid=do["id"])["volume"]
        user.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
        snap = user.createSnapshot(volumeid=vol["id"])["snapshot"]
        user.createSnapshotPolicy(volumeid=vol["id"], intervaltype="DAILY", schedule="30:02", maxsnaps=2, timezone="UTC")
        user.createVMSnapshot(virtualmachineid=vm["id"])
        if i < 3:
            user.createTemplate(name=f"t{i}", displaytext="t", snapshotid=snap["id"],
                                ostypeid=api.listOsTypes()["ostype"][0]["id"])
    return api, users[0]


_dbs = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seeded(request, tmp_path_factory):
    """One seeded server per database for the module's tests (seeding is most of their time)."""
    tmp = tmp_path_factory.mktemp("seeded")
    url = f"sqlite:///{tmp / 'volstack.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres").createdb(f"ls{os.getpid()}_{next(_dbs)}")
    ms = start_server(url, tmp)
    api, user = _seed(ms)
    yield ms, api, user
    ms.stop()


def _statements(ms, api, name, size, who):
    cmd = API.get(name)
    params = {**(USER_ARGS if who == "user" else {}).get(name, ARGS.get(name, {})), "page": 1, "pagesize": size}
    if any(p.name == "listall" for p in cmd.params):
        params["listall"] = True
    with RequestStatements(ms.db.engine) as meter:
        getattr(api, name)(**params)
    return meter.count, meter.statements


def test_every_list_page_costs_the_same_few_statements(seeded, monkeypatch):
    from volstack.services import accounts
    monkeypatch.setattr(accounts, "KEY_CACHE_SECONDS", 3600)    # pages, not the key lookup, are measured here
    ms, api, user = seeded
    api.listZones(), user.listZones()
    over = {}
    for name in sorted(API.commands):
        if not API.commands[name].is_list or name in SKIP:
            continue
        for who, caller in (("admin", api), ("user", user)):
            if not API.commands[name].allowed(1 if who == "admin" else 0):
                continue
            small, _ = _statements(ms, caller, name, 2, who)
            big, statements = _statements(ms, caller, name, ROWS, who)
            if big > MAX_STATEMENTS or big > small + 1:
                over[f"{name} ({who})"] = (small, big, statements)
    assert not over, "\n".join(f"{k}: {s} statements for 2 rows, {b} for {ROWS}:\n  " + "\n  ".join(st)
                               for k, (s, b, st) in over.items())


def test_maintained_counts_equal_a_recount_after_creates_and_deletes(seeded):
    """Usage per account and allocated bytes per pool are kept in the transaction of each change; a recount
    (updateResourceCount) from the objects finds the same values, after creates and deletions."""
    ms, api, user = seeded
    vols = user.listVolumes(type="DATADISK")["volume"]
    for vs in user.listVMSnapshot(virtualmachineid=vols[0]["virtualmachineid"])["vmSnapshot"]:
        user.deleteVMSnapshot(vmsnapshotid=vs["id"])
    user.detachVolume(id=vols[0]["id"])
    user.deleteVolume(id=vols[0]["id"])
    snaps = user.listSnapshots()["snapshot"]
    user.deleteSnapshot(id=snaps[0]["id"])
    before_acc = {a["name"]: a for a in api.listAccounts(listall=True)["account"]}
    before_pools = {p["name"]: p["disksizeallocated"] for p in api.listStoragePools()["storagepool"]}
    ann = before_acc["ann"]
    assert (ann["volumetotal"], ann["snapshottotal"]) == (3 + 3 - 1, 3 - 1)      # 3 ROOT + 3 data - 1; 3 - 1
    assert before_pools["p1"] == sum(v["size"] for v in api.listVolumes(listall=True)["volume"])
    root = api.listDomains(name="ROOT")["domain"][0]
    counted = api.updateResourceCount(domainid=root["id"])["resourcecount"]
    for row in counted:
        acc = before_acc.get(row["account"])
        if acc is None:
            continue
        field = {"volume": "volumetotal", "snapshot": "snapshottotal", "template": "templatetotal"}.get(row["resourcetypename"])
        if field:
            assert row["resourcecount"] == acc[field], (row, acc[field])
    after_acc = {a["name"]: a for a in api.listAccounts(listall=True)["account"]}
    keys = [k for k in ann if k.endswith("total")]
    assert {n: [a[k] for k in keys] for n, a in after_acc.items()} == {n: [a[k] for k in keys] for n, a in before_acc.items()}
    assert {p["name"]: p["disksizeallocated"] for p in api.listStoragePools()["storagepool"]} == before_pools
    with ms.db.session() as s:         # the recount really writes: a damaged count is repaired
        from volstack.db import counters
        from volstack.db.models import Account
        from sqlalchemy import select
        ann_id = s.scalar(select(Account.id).where(Account.name == "ann"))
        counters.set_count(s, "account", ann_id, "volume", 99)
    assert api.listAccounts(name="ann", listall=True)["account"][0]["volumetotal"] == 99
    api.updateResourceCount(domainid=ann["domainid"], account="ann")
    assert api.listAccounts(name="ann", listall=True)["account"][0]["volumetotal"] == 5


def test_bad_list_input_gets_cloudstacks_answers_quickly(seeded):
    """Wildcards and quotes in a keyword are characters, not patterns; a 10,000-character keyword, a page size
    past default.page.size are refused with 431; a page past the end is empty. Plain pages count from the
    maintained counts and agree with a counted filter."""
    import time
    from cs import CloudStackApiException
    ms, api, user = seeded
    zone = api.listZones()["zone"][0]["id"]
    for kw in ("%", "_", "v_", "'", '"', "\\", "%v%"):
        assert api.listVolumes(listall=True, keyword=kw) == {}, kw
    assert api.listVolumes(listall=True, keyword="V")["count"] == len(api.listVolumes(listall=True, type="DATADISK")["volume"])
    for params, text in (({"keyword": "x" * 10000}, "keyword"), ({"pagesize": 501, "page": 1}, "Page size can't exceed")):
        t0 = time.monotonic()
        with pytest.raises(CloudStackApiException) as e:
            api.listVolumes(listall=True, **params)
        assert e.value.error["errorcode"] == 431 and text in e.value.error["errortext"], e.value.error
        assert time.monotonic() - t0 < 2
    past = api.listVolumes(listall=True, page=1000, pagesize=500)        # an empty page, with the total
    assert past.get("volume", []) == [] and past["count"] == api.listVolumes(listall=True)["count"]
    for caller in (api, user):
        plain = caller.listVolumes(listall=True, page=1, pagesize=2)
        counted = caller.listVolumes(listall=True, zoneid=zone, page=1, pagesize=2)   # a filter: counted rows
        assert plain["count"] == counted["count"] and len(plain["volume"]) == 2
