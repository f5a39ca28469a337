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


def test_dates_in_every_cloudstack_form(two_zones):
    api = two_zones["api"]
    from datetime import datetime, timedelta, timezone
    now = datetime.now(timezone.utc)
    today, tomorrow = now.strftime("%Y-%m-%d"), (now + timedelta(days=1)).strftime("%Y-%m-%d")
    assert api.listEvents(startdate=today)["count"] > 0
    assert api.listEvents(startdate=f"{today} 00:00:00")["count"] > 0
    assert api.listEvents(startdate=now.strftime("%Y-%m-%dT00:00:00+0000"))["count"] > 0
    assert api.listEvents(startdate=tomorrow) == {} and api.listEvents(enddate=today) == {}
    do = api.createDiskOffering(name="dd", disksize=1, displaytext="dd")["diskoffering"]
    api.createVolume(name="dv", zoneid=two_zones["zones"][0]["id"], diskofferingid=do["id"])      # an async job
    assert [j["cmd"] for j in api.listAsyncJobs(startdate=today)["asyncjobs"]] == ["createVolume"]
    assert api.listAsyncJobs(startdate=tomorrow) == {}
    code, text = error_of(lambda: api.listEvents(startdate="04.12.2026"))
    assert code == 431 and "yyyy-MM-dd HH:mm:ss" in text


def test_browser_paths_are_under_the_root(two_zones):
    api, (z1, _) = two_zones["api"], two_zones["zones"]
    c = api.listClusters(name="fc1")["cluster"][0]
    pool = api.createStoragePool(name="bp", url="nfs://10.0.0.1/bp", zoneid=z1["id"], podid=c["podid"],
                                 clusterid=c["id"])["storagepool"]
    do = api.createDiskOffering(name="bd", disksize=1, displaytext="bd")["diskoffering"]
    so = api.createServiceOffering(name="bs", cpunumber=1, cpuspeed=500, memory=256, displaytext="bs")["serviceoffering"]
    api.deployVirtualMachine(zoneid=z1["id"], serviceofferingid=so["id"], rootdisksize=1)
    vol = api.listVolumes(type="ROOT")["volume"][0]
    for path in ("/", "", "/../.."):
        listed = api.listStoragePoolObjects(id=pool["id"], path=path)["datastoreobject"]
        assert [(o["name"], o.get("volumeid")) for o in listed] == [(vol["path"], vol["id"])], path
    store = api.listImageStores(name="sec1")["imagestore"][0]
    assert api.listImageStoreObjects(id=store["id"], path="/") == api.listImageStoreObjects(id=store["id"])
    assert do


def test_pod_range_basic_zone_and_domain_subtree(two_zones):
    api = two_zones["api"]
    z = api.createZone(name="bz", networktype="Basic")["zone"]
    assert (z["securitygroupsenabled"], z["dhcpprovider"]) == (True, "VirtualRouter")
    pod = api.createPod(name="rp", zoneid=z["id"], gateway="10.1.0.1", netmask="255.255.255.0",
                        startip="10.1.0.10")["pod"]
    assert pod["endip"] == "10.1.0.254"
    parent = api.createDomain(name="top")["domain"]
    child = api.createDomain(name="kid", parentdomainid=parent["id"])["domain"]
    api.createDomain(name="grandkid", parentdomainid=child["id"])
    api.createAccount(username="u1", password="pw", accounttype=0, domainid=child["id"])
    api.deleteDomain(id=parent["id"], cleanup=True)
    assert {d["name"] for d in api.listDomains(listall=True)["domain"]} == {"ROOT"}


def test_renamed_parameters_and_keys(two_zones):
    api = two_zones["api"]
    store = api.listImageStores(name="sec1")["imagestore"][0]
    # imagestoreid is read (no setting is image-store scoped yet, so the scope is refused by name)
    code, text = error_of(lambda: api.resetConfiguration(name="secstorage.max.migrate.sessions",
                                                         imagestoreid=store["id"]))
    assert code == 431 and "Scope imagestore is not valid" in text
    code, text = error_of(lambda: api.createAccount(username="ad", password="pw", accounttype=0,
                                                    **{"accountdetails[0].key": "a", "accountdetails[0].value": "b"}))
    assert code == 431 and "updateConfiguration" in text
    assert api.listAccounts(name="ad", listall=True) == {}
    assert "id" not in [p["name"] for p in api.listApis(name="updateSnapshotPolicy")["api"][0]["params"]
                        if p["required"]]


def test_simulator_hosts_are_named_as_cloudstacks_simulator_names_them(two_zones):
    api = two_zones["api"]
    z = api.createZone(name="simz", networktype="Advanced")["zone"]
    pod = api.createPod(name="simp", zoneid=z["id"], gateway="172.16.15.1", netmask="255.255.255.0",
                        startip="172.16.15.2", endip="172.16.15.200")["pod"]
    cl = api.addCluster(clustername="C0", zoneid=z["id"], podid=pod["id"], hypervisor="Simulator",
                        clustertype="CloudManaged")["cluster"][0]
    hosts = [api.addHost(zoneid=z["id"], podid=pod["id"], clusterid=cl["id"], hypervisor="Simulator",
                         url=f"http://sim/c0/h{i}", username="root", password="password")["host"][0] for i in (0, 1)]
    assert [h["name"] for h in hosts] == [f"SimulatedAgent.{h['id']}" for h in hosts]
    assert [h["ipaddress"] for h in hosts] == ["172.16.15.2", "172.16.15.3"]
    assert {h["state"] for h in hosts} == {"Up"}


def test_guest_os_catalogue_and_user_defined_types(two_zones):
    api = two_zones["api"]
    types = api.listOsTypes()["ostype"]
    names = {t["description"] for t in types}
    assert len(types) >= 170 and {"CentOS 5.6 (64-bit)", "Debian GNU/Linux 7(64-bit)", "Other Linux (64-bit)"} <= names
    cats = {c["name"]: c["id"] for c in api.listOsCategories()["oscategory"]}
    assert {"CentOS", "Debian", "Oracle", "RedHat", "SUSE", "Windows", "Other", "Novel", "Unix", "Ubuntu"} <= set(cats)
    assert api.listOsCategories(name="debian")["oscategory"][0]["id"] == cats["Debian"]
    centos = api.listOsTypes(description="CentOS 5.6 (64-bit)")["ostype"][0]
    assert (centos["oscategoryname"], centos["isuserdefined"]) == ("CentOS", False)

    mine = api.addGuestOs(oscategoryid=cats["Debian"], osdisplayname="Debian GNU/Linux 13 (64-bit)",
                          **{"details[0].key": "virtio", "details[0].value": "true"})["guestos"]
    assert (mine["description"], mine["oscategoryname"], mine["isuserdefined"]) == \
        ("Debian GNU/Linux 13 (64-bit)", "Debian", True)
    assert api.listOsTypes(id=mine["id"])["ostype"][0]["description"] == "Debian GNU/Linux 13 (64-bit)"
    assert api.listResourceDetails(resourcetype="GuestOs", resourceid=mine["id"])["resourcedetail"][0]["key"] == "virtio"
    code, text = error_of(lambda: api.addGuestOs(oscategoryid=cats["Debian"], osdisplayname="centos 5.6 (64-BIT)"))
    assert code == 431 and "already exists" in text
    assert api.updateGuestOs(id=mine["id"], osdisplayname="Debian 13")["guestos"]["description"] == "Debian 13"
    code, text = error_of(lambda: api.updateGuestOs(id=centos["id"], osdisplayname="x"))
    assert code == 431 and "cannot be changed" in text
    t = api.registerTemplate(name="d13", url="http://10.0.0.1/d13.qcow2", format="QCOW2", hypervisor="KVM",
                             zoneid=two_zones["zones"][0]["id"], ostypeid=mine["id"])["template"][0]
    assert t["ostypename"] == "Debian 13"
    code, text = error_of(lambda: api.removeGuestOs(id=mine["id"]))
    assert code == 536 and "1 template" in text
    api.deleteTemplate(id=t["id"])
    api.removeGuestOs(id=mine["id"])
    assert api.listOsTypes(id=mine["id"]) == {}


def test_projectid_is_never_a_filter_silently_ignored(two_zones):
    api, (z1, _) = two_zones["api"], two_zones["zones"]
    do = api.createDiskOffering(name="pd", disksize=1, displaytext="pd")["diskoffering"]
    api.createVolume(name="pv", zoneid=z1["id"], diskofferingid=do["id"])
    nosuch = "0b7c1b1e-0000-4000-8000-000000000000"
    for call in (lambda: api.listVolumes(projectid=nosuch), lambda: api.listTemplates(templatefilter="all",
                                                                                      projectid=nosuch),
                 lambda: api.createVolume(name="pv2", zoneid=z1["id"], diskofferingid=do["id"], projectid=nosuch)):
        code, text = error_of(call)
        assert code == 431 and "projectid" in text
    assert [v["name"] for v in api.listVolumes()["volume"]] == ["pv"]


def test_extract_volume_on_simulator_hosts_answers_a_url(two_zones):
    api, (z1, _) = two_zones["api"], two_zones["zones"]
    c = api.listClusters(name="fc1")["cluster"][0]
    api.createStoragePool(name="xp", url="nfs://10.0.0.1/xp", zoneid=z1["id"], podid=c["podid"], clusterid=c["id"])
    do = api.createDiskOffering(name="xd", disksize=1, displaytext="xd")["diskoffering"]
    so = api.createServiceOffering(name="xs", cpunumber=1, cpuspeed=500, memory=256, displaytext="xs")["serviceoffering"]
    vm = api.deployVirtualMachine(zoneid=z1["id"], serviceofferingid=so["id"], rootdisksize=1)["virtualmachine"]
    vol = api.createVolume(name="xv", zoneid=z1["id"], diskofferingid=do["id"])["volume"]
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    api.detachVolume(id=vol["id"])
    got = api.extractVolume(id=vol["id"], mode="HTTP_DOWNLOAD", zoneid=z1["id"])["volume"]
    assert got["state"] == "DOWNLOAD_URL_CREATED" and got["url"].startswith("http://simf1/")


def test_list_storage_tags(two_zones):
    api, (z1, _) = two_zones["api"], two_zones["zones"]
    c = api.listClusters(name="fc1")["cluster"][0]
    pool = api.createStoragePool(name="tp", url="nfs://10.0.0.1/tp", zoneid=z1["id"], podid=c["podid"],
                                 clusterid=c["id"], tags="ssd,fast")["storagepool"]
    got = api.listStorageTags()["storagetag"]
    assert sorted((t["name"], t["poolid"]) for t in got) == [("fast", pool["id"]), ("ssd", pool["id"])]
    assert [t["name"] for t in api.listStorageTags(keyword="ss")["storagetag"]] == ["ssd"]
