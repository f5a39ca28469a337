"""Resource tags and resource details on Simulator hosts, on SQLite and PostgreSQL: createTags/deleteTags/listTags,
`tags` in responses, the tags[i].key/value filters of list commands, tags on createSnapshot and
createSnapshotPolicy, addResourceDetail/removeResourceDetail/listResourceDetails."""
import pytest
from cs import CloudStackApiException
from sqlalchemy import event

from support import add_datacenter, client

GIB = 2 ** 30


@pytest.fixture
def sim(server_any_db):
    """On SQLite and PostgreSQL: the tests of the tag queries themselves."""
    return _datacenter(server_any_db)


@pytest.fixture
def sim1(server):
    """On SQLite only: tests of what the API shows, whose queries the tests on both databases already run."""
    return _datacenter(server)


def _datacenter(ms):
    api = client(ms)
    dc = add_datacenter(api, "tz", "tp", "tc", ["http://simt"])
    zone = dc["zone"]
    api.createStoragePool(name="p1", url="nfs://10.0.0.1/p1", capacitybytes=100 * GIB, **dc["at"])
    api.addImageStore(name="sec", provider="NFS", url="nfs://10.0.0.1/sec", zoneid=zone["id"])
    do = api.createDiskOffering(name="d1", disksize=1, displaytext="d1")["diskoffering"]
    so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=256, displaytext="s")["serviceoffering"]
    return dict(api=api, zone=zone, do=do, so=so, server=ms)


def error_of(call):
    with pytest.raises(CloudStackApiException) as e:
        call()
    return e.value.error["errorcode"], e.value.error["errortext"]


def _tags(d: dict) -> dict:
    return {f"tags[{i}].{f}": v for i, (k, val) in enumerate(d.items()) for f, v in (("key", k), ("value", val))}


def _kv(resource) -> dict:
    return {t["key"]: t["value"] for t in resource["tags"]}


def _vol(c, name):
    return c["api"].createVolume(name=name, zoneid=c["zone"]["id"], diskofferingid=c["do"]["id"])["volume"]


def test_volume_tags_create_filter_list_delete(sim):
    api = sim["api"]
    v1, v2 = _vol(sim, "v1"), _vol(sim, "v2")
    assert v1["tags"] == [] and api.listVolumes(id=v1["id"])["volume"][0]["tags"] == []

    api.createTags(resourceids=f"{v1['id']},{v2['id']}", resourcetype="Volume", **_tags({"env": "prod", "team": "a"}))
    api.createTags(resourceids=v2["id"], resourcetype="volume", **_tags({"tier": "gold"}))
    got = {v["name"]: _kv(v) for v in api.listVolumes()["volume"]}
    assert got == {"v1": {"env": "prod", "team": "a"}, "v2": {"env": "prod", "team": "a", "tier": "gold"}}
    tag = api.listVolumes(id=v1["id"])["volume"][0]["tags"][0]
    assert (tag["resourcetype"], tag["resourceid"], tag["account"], tag["domain"]) == ("Volume", v1["id"], "admin",
                                                                                       "ROOT")

    # filters: any given pair matches, keys and values ignore case; a pair nobody has selects nothing
    names = lambda **kw: sorted(v["name"] for v in api.listVolumes(**kw).get("volume", []))  # noqa: E731
    assert names(**_tags({"ENV": "Prod"})) == ["v1", "v2"]
    assert names(**_tags({"tier": "gold"})) == ["v2"]
    assert names(**_tags({"tier": "gold", "team": "a"})) == ["v1", "v2"]
    assert names(**_tags({"nosuch": "x"})) == [] and names(**_tags({"tier": "silver"})) == []
    assert api.listVolumesMetrics(**_tags({"tier": "gold"}))["volume"][0]["name"] == "v2"
    assert error_of(lambda: api.listVolumes(**{"tags[0].key": "env"})) == (431, "No value is passed in for key env")

    # listTags
    listed = api.listTags(resourcetype="Volume", resourceid=v1["id"])["tag"]
    assert sorted((t["key"], t["value"]) for t in listed) == [("env", "prod"), ("team", "a")]
    assert api.listTags(key="tier")["count"] == 1 and api.listTags(value="PROD")["count"] == 2

    # refused: a key already on the resource, an empty value, a type without tags, an unknown type or id
    code, text = error_of(lambda: api.createTags(resourceids=v1["id"], resourcetype="Volume", **_tags({"env": "dev"})))
    assert code == 431 and "tag env already on Volume" in text
    assert _kv(api.listVolumes(id=v1["id"])["volume"][0]) == {"env": "prod", "team": "a"}      # nothing half-made
    assert error_of(lambda: api.createTags(resourceids=v1["id"], resourcetype="Volume",
                                           **{"tags[0].key": "k", "tags[0].value": ""}))[0] == 431
    assert error_of(lambda: api.createTags(resourceids=sim["zone"]["id"], resourcetype="Zone", **_tags({"a": "b"}))) \
        == (431, "The resource type Zone doesn't support resource tags")
    code, text = error_of(lambda: api.createTags(resourceids=v1["id"], resourcetype="Disk", **_tags({"a": "b"})))
    assert code == 431 and text.startswith("Invalid resource type Disk") and "Volume" in text
    code, text = error_of(lambda: api.createTags(resourceids=sim["do"]["id"], resourcetype="Volume",
                                                 **_tags({"a": "b"})))
    assert code == 431 and f"Unable to find resource by id {sim['do']['id']} and type Volume" in text

    # deleteTags: by key (any value), by key and value ignoring case, nothing matching is an error
    api.deleteTags(resourceids=v1["id"], resourcetype="Volume", **{"tags[0].key": "env"})
    api.deleteTags(resourceids=v2["id"], resourcetype="Volume", **_tags({"TIER": "GOLD"}))
    code, text = error_of(lambda: api.deleteTags(resourceids=v2["id"], resourcetype="Volume", **_tags({"team": "b"})))
    assert code == 431 and "No tags to delete" in text
    got = {v["name"]: _kv(v) for v in api.listVolumes()["volume"]}
    assert got == {"v1": {"team": "a"}, "v2": {"env": "prod", "team": "a"}}
    api.deleteTags(resourceids=v2["id"], resourcetype="Volume")            # no tags given: all of them
    assert api.listVolumes(id=v2["id"])["volume"][0]["tags"] == []

    # a removed resource takes its tags with it
    api.deleteVolume(id=v1["id"])
    assert api.listTags(resourcetype="Volume") == {}


def test_tags_on_every_tagged_response_and_create_commands(sim1):
    sim = sim1
    api, zone = sim["api"], sim["zone"]
    assert api.listZones(id=zone["id"])["zone"][0]["tags"] == []
    vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=sim["so"]["id"], rootdisksize=1,
                                  name="tvm")["virtualmachine"]
    assert vm["tags"] == []
    vol = _vol(sim, "data")
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])

    snap = api.createSnapshot(volumeid=vol["id"], **_tags({"backup": "weekly"}))["snapshot"]
    assert _kv(snap) == {"backup": "weekly"} and _kv(api.listSnapshots(id=snap["id"])["snapshot"][0]) == _kv(snap)
    assert [s["id"] for s in api.listSnapshots(**_tags({"backup": "weekly"}))["snapshot"]] == [snap["id"]]
    assert api.listSnapshots(**_tags({"backup": "daily"})) == {}

    policy = api.createSnapshotPolicy(volumeid=vol["id"], intervaltype="DAILY", schedule="00:01", maxsnaps=2,
                                      timezone="UTC", **_tags({"owner": "ops"}))["snapshotpolicy"]
    assert _kv(policy) == {"owner": "ops"}
    again = api.createSnapshotPolicy(volumeid=vol["id"], intervaltype="DAILY", schedule="00:02", maxsnaps=2,
                                     timezone="UTC", **_tags({"owner": "dev"}))["snapshotpolicy"]
    assert again["id"] == policy["id"] and _kv(again) == {"owner": "dev"}       # the policy updated, its tag too

    vmsnap = api.createVMSnapshot(virtualmachineid=vm["id"], name="vs1")["vmsnapshot"]
    assert vmsnap["tags"] == []
    api.createTags(resourceids=vmsnap["id"], resourcetype="VMSnapshot", **_tags({"k": "v"}))
    assert _kv(api.listVMSnapshot(**_tags({"k": "v"}))["vmSnapshot"][0]) == {"k": "v"}

    api.createTags(resourceids=vm["id"], resourcetype="UserVm", **_tags({"role": "db"}))
    assert _kv(api.listVirtualMachines(**_tags({"role": "db"}))["virtualmachine"][0]) == {"role": "db"}
    assert api.listVirtualMachines(**_tags({"role": "web"})) == {}

    iso = api.registerIso(name="tiso", displaytext="tiso", url="http://10.0.0.1/x.iso", zoneid=zone["id"],
                          ostypeid=api.listOsTypes()["ostype"][0]["id"])["iso"][0]
    assert iso["tags"] == []
    api.createTags(resourceids=iso["id"], resourcetype="ISO", **_tags({"os": "x"}))
    code, text = error_of(lambda: api.createTags(resourceids=iso["id"], resourcetype="Template", **_tags({"a": "b"})))
    assert code == 431 and "type Template" in text                       # an ISO is not a Template
    assert _kv(api.listIsos(isofilter="self", **_tags({"os": "x"}))["iso"][0]) == {"os": "x"}
    assert api.listTemplates(templatefilter="self", **_tags({"os": "x"})) == {}


def test_users_tag_only_what_they_own(sim1):
    sim = sim1
    api, server = sim["api"], sim["server"]
    acc = api.createAccount(username="bob", password="pw-bob", accounttype=0)["account"]
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    bob = client(server, keys["apikey"], keys["secretkey"])
    mine = _vol(sim, "admins")
    api.createTags(resourceids=mine["id"], resourcetype="Volume", **_tags({"a": "1"}))
    code, _ = error_of(lambda: bob.createTags(resourceids=mine["id"], resourcetype="Volume", **_tags({"b": "2"})))
    assert code == 531
    assert error_of(lambda: bob.deleteTags(resourceids=mine["id"], resourcetype="Volume"))[0] == 531
    assert bob.listTags() == {}
    his = bob.createVolume(name="bobs", zoneid=sim["zone"]["id"], diskofferingid=sim["do"]["id"])["volume"]
    bob.createTags(resourceids=his["id"], resourcetype="Volume", **_tags({"b": "2"}))
    assert [(t["key"], t["account"]) for t in bob.listTags()["tag"]] == [("b", "bob")]
    assert sorted(t["key"] for t in api.listTags(listall=True)["tag"]) == ["a", "b"]
    assert [t["key"] for t in api.listTags()["tag"]] == ["a"]


def test_list_tags_are_loaded_once_per_page(sim):
    """The tags of a page of volumes come from one query, however many volumes the page holds."""
    api, server = sim["api"], sim["server"]
    vols = [_vol(sim, f"b{i}") for i in range(12)]
    api.createTags(resourceids=",".join(v["id"] for v in vols), resourcetype="Volume", **_tags({"k": "v"}))
    seen = []

    def count(conn, cursor, statement, *args):
        if "FROM resource_tags" in statement:
            seen.append(statement)
    event.listen(server.db.engine, "before_cursor_execute", count)
    try:
        page = api.listVolumes(page=1, pagesize=10)["volume"]
    finally:
        event.remove(server.db.engine, "before_cursor_execute", count)
    assert len(page) == 10 and all(_kv(v) == {"k": "v"} for v in page)
    assert len(seen) == 1, seen


def test_resource_details(sim):
    api, zone = sim["api"], sim["zone"]
    vol = _vol(sim, "dv")
    pool = api.listStoragePools(name="p1")["storagepool"][0]
    api.addResourceDetail(resourceid=vol["id"], resourcetype="Volume",
                          **{"details[0].key": "purpose", "details[0].value": "db", "details[1].key": "x",
                             "details[1].value": "1"})
    api.addResourceDetail(resourceid=vol["id"], resourcetype="Volume", fordisplay=False,
                          **{"details[0].key": "x", "details[0].value": "2"})
    api.addResourceDetail(resourceid=pool["id"], resourcetype="Storage",
                          **{"details[0].key": "rack", "details[0].value": "r7"})
    got = api.listResourceDetails(resourcetype="Volume", resourceid=vol["id"])["resourcedetail"]
    assert sorted((d["key"], d["value"], d["fordisplay"], d["resourceid"]) for d in got) == \
        [("purpose", "db", True, vol["id"]), ("x", "2", False, vol["id"])]
    assert api.listResourceDetails(resourcetype="Volume", fordisplay=True)["count"] == 1
    assert api.listResourceDetails(resourcetype="Storage", key="rack")["resourcedetail"][0]["value"] == "r7"
    api.removeResourceDetail(resourceid=vol["id"], resourcetype="Volume", key="x")
    assert api.listResourceDetails(resourcetype="Volume")["count"] == 1
    code, text = error_of(lambda: api.removeResourceDetail(resourceid=vol["id"], resourcetype="Volume", key="x"))
    assert code == 431 and "has no detail x" in text
    assert error_of(lambda: api.addResourceDetail(resourceid=vol["id"], resourcetype="Snapshot",
                                                  **{"details[0].key": "a", "details[0].value": "b"})) == \
        (431, "The resource type Snapshot doesn't support metadata (resource details)")
    acc = api.createAccount(username="eve", password="pw-eve", accounttype=0)["account"]
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    eve = client(sim["server"], keys["apikey"], keys["secretkey"])
    assert error_of(lambda: eve.addResourceDetail(resourceid=zone["id"], resourcetype="Zone",
                                                  **{"details[0].key": "a", "details[0].value": "b"}))[0] == 531
    assert error_of(lambda: eve.listResourceDetails(resourcetype="Volume", resourceid=vol["id"]))[0] == 531
    api.deleteVolume(id=vol["id"])
    assert api.listResourceDetails(resourcetype="Volume") == {}
