"""CloudStack behaviours clients rely on (issue 15), on Simulator hosts: cross-zone templates and ISOs, name
filters that ignore case."""
import pytest
from cs import CloudStackApiException

from agentproc import wait_until
from support import add_datacenter, client


@pytest.fixture
def two_zones(server):
    api = client(server)
    zones = []
    for i in (1, 2):
        dc = add_datacenter(api, f"fz{i}", f"fp{i}", f"fc{i}", [f"http://simf{i}"])
        api.addImageStore(name=f"sec{i}", provider="NFS", url=f"nfs://10.0.0.1/sec{i}", zoneid=dc["zone"]["id"])
        zones.append(dc["zone"])
    return dict(api=api, zones=zones, server=server)


def error_of(call):
    with pytest.raises(CloudStackApiException) as e:
        call()
    return e.value.error["errorcode"], e.value.error["errortext"]


def test_cross_zone_templates_and_isos_are_one_row_per_zone(two_zones):
    api, (z1, z2) = two_zones["api"], two_zones["zones"]
    t = api.registerTemplate(name="xt", displaytext="xt", url="http://10.0.0.1/xt.qcow2", format="QCOW2",
                             hypervisor="KVM", zoneid=-1)["template"][0]
    assert t["crossZones"] is True
    rows = api.listTemplates(templatefilter="self", name="xt")["template"]
    assert [(r["id"], r["zoneid"], r["zonename"]) for r in rows] == [(t["id"], z1["id"], "fz1"), (t["id"], z2["id"], "fz2")]
    assert all(r["tags"] == [] for r in rows)
    wait_until("the template ready in both zones", lambda: all(
        r["isready"] for r in api.listTemplates(templatefilter="self", name="xt")["template"]))
    second = api.listTemplates(templatefilter="self", zoneid=z2["id"])["template"]
    assert [(r["id"], r["zoneid"], r["zonename"]) for r in second] == [(t["id"], z2["id"], "fz2")]

    iso = api.registerIso(name="xi", displaytext="xi", url="http://10.0.0.1/xi.iso", zoneids="-1")["iso"][0]
    assert iso["crossZones"] is True
    assert sorted(r["zonename"] for r in api.listIsos(isofilter="self", id=iso["id"])["iso"]) == ["fz1", "fz2"]
    # a template in one zone stays one row
    one = api.registerTemplate(name="ot", displaytext="ot", url="http://10.0.0.1/ot.qcow2", format="QCOW2",
                               hypervisor="KVM", zoneid=z1["id"])["template"][0]
    assert one["crossZones"] is False and api.listTemplates(templatefilter="self", id=one["id"])["count"] == 1
    code, text = error_of(lambda: api.registerTemplate(name="bad", url="http://10.0.0.1/b.qcow2", format="QCOW2",
                                                       hypervisor="KVM", zoneid="-2"))
    assert code == 431 and "expected a uuid" in text


def test_name_filters_ignore_case(two_zones):
    api, (z1, _) = two_zones["api"], two_zones["zones"]
    assert [c["name"] for c in api.listClusters(name="FC1")["cluster"]] == ["fc1"]
    assert [z["name"] for z in api.listZones(name="FZ2")["zone"]] == ["fz2"]
    do = api.createDiskOffering(name="d", disksize=1, displaytext="d")["diskoffering"]
    api.createVolume(name="Data1", zoneid=z1["id"], diskofferingid=do["id"])
    assert [v["name"] for v in api.listVolumes(name="data1")["volume"]] == ["Data1"]
