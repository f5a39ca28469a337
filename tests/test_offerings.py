"""Disk offerings and service offerings through the `cs` library: create, list, update, delete, QoS,
validation, visibility, and the parameter -> response echo that idempotent clients (Ansible) rely on."""
import pytest
from cs import CloudStackApiException
from sqlalchemy import select

from support import client
from volstack.db.models import Event
from volstack.db.storage_models import DiskOffering, ServiceOffering
from volstack.services import offerings
from volstack.services import settings as S

GIB = 1024 ** 3

RATES = {"bytesreadrate": 10_000_000, "bytesreadratemax": 20_000_000, "bytesreadratemaxlength": 10,
         "byteswriterate": 5_000_000, "byteswriteratemax": 8_000_000, "byteswriteratemaxlength": 5,
         "iopsreadrate": 500, "iopsreadratemax": 1000, "iopsreadratemaxlength": 30,
         "iopswriterate": 300, "iopswriteratemax": 600, "iopswriteratemaxlength": 20}
RATE_FIELDS = {"bytesreadrate": "diskBytesReadRate", "bytesreadratemax": "diskBytesReadRateMax",
               "bytesreadratemaxlength": "diskBytesReadRateMaxLength", "byteswriterate": "diskBytesWriteRate",
               "byteswriteratemax": "diskBytesWriteRateMax", "byteswriteratemaxlength": "diskBytesWriteRateMaxLength",
               "iopsreadrate": "diskIopsReadRate", "iopsreadratemax": "diskIopsReadRateMax",
               "iopsreadratemaxlength": "diskIopsReadRateMaxLength", "iopswriterate": "diskIopsWriteRate",
               "iopswriteratemax": "diskIopsWriteRateMax", "iopswriteratemaxlength": "diskIopsWriteRateMaxLength"}

# request parameter -> response field, as CloudStack names them (DiskOfferingResponse/ServiceOfferingResponse)
DISK_ECHO = {"name": "name", "displaytext": "displaytext", "disksize": "disksize", "customized": "iscustomized",
             "tags": "tags", "storagetype": "storagetype", "provisioningtype": "provisioningtype",
             "cachemode": "cacheMode", "customizediops": "iscustomizediops", "miniops": "miniops",
             "maxiops": "maxiops", "hypervisorsnapshotreserve": "hypervisorsnapshotreserve", "encrypt": "encrypt",
             "disksizestrictness": "disksizestrictness", "displayoffering": "displayoffering",
             "mindisksize": "mindisksize", "maxdisksize": "maxdisksize", "domainid": "domainid", "zoneid": "zoneid",
             "details": "details", **RATE_FIELDS}
SERVICE_ECHO = {"name": "name", "displaytext": "displaytext", "cpunumber": "cpunumber", "cpuspeed": "cpuspeed",
                "memory": "memory", "customized": "iscustomized", "isvolatile": "isvolatile", "issystem": "issystem",
                "hosttags": "hosttags", "domainid": "domainid", "zoneid": "zoneid", "diskofferingid": "diskofferingid",
                "diskofferingstrictness": "diskofferingstrictness", "rootdisksize": "rootdisksize",
                "tags": "storagetags", "storagetype": "storagetype", "provisioningtype": "provisioningtype",
                "customizediops": "iscustomizediops", "miniops": "miniops", "maxiops": "maxiops",
                "hypervisorsnapshotreserve": "hypervisorsnapshotreserve", "cachemode": "cacheMode",
                "encryptroot": "encryptroot", **RATE_FIELDS}


def _err(fn, **kw):
    with pytest.raises(CloudStackApiException) as e:
        fn(**kw)
    return e.value.error


def _user_api(server, api, name, accounttype=0, domainid=None):
    acc = api.createAccount(username=name, password="pw-" + name, accounttype=accounttype,
                            **({"domainid": domainid} if domainid else {}))["account"]
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    return acc, client(server, keys["apikey"], keys["secretkey"])


def _names(listing, key):
    return sorted(o["name"] for o in listing.get(key, []))


# ---------------------------------------------------------------- disk offerings

def test_disk_offering_lifecycle_and_events(server_any_db):
    server = server_any_db
    api = client(server)
    do = api.createDiskOffering(name="small", displaytext="Small 10GB", disksize=10, tags="ssd, fast,,ssd",
                                provisioningtype="Sparse", storagetype="LOCAL")["diskoffering"]
    assert do["disksize"] == 10 and do["iscustomized"] is False and do["tags"] == "ssd,fast"
    assert do["provisioningtype"] == "sparse" and do["storagetype"] == "local" and do["state"] == "Active"
    assert do["displayoffering"] is True and do["encrypt"] is False and "domainid" not in do and "zoneid" not in do
    with server.db.session() as s:
        assert s.scalar(select(DiskOffering.disk_size).where(DiskOffering.uuid == do["id"])) == 10 * GIB

    listed = api.listDiskOfferings(id=do["id"])
    assert listed["count"] == 1 and listed["diskoffering"][0] == do
    assert _names(api.listDiskOfferings(name="small"), "diskoffering") == ["small"]
    assert api.listDiskOfferings(name="smal") == {}            # name is an exact match
    assert _names(api.listDiskOfferings(keyword="Small 10"), "diskoffering") == ["small"]

    up = api.updateDiskOffering(id=do["id"], name="small2", displaytext="Small", tags="nvme", cachemode="writeback",
                                displayoffering=False)["diskoffering"]
    assert (up["name"], up["displaytext"], up["tags"], up["cacheMode"], up["displayoffering"]) == \
        ("small2", "Small", "nvme", "writeback", False)
    assert api.deleteDiskOffering(id=do["id"]) == {"success": True}
    assert api.listDiskOfferings() == {} and api.listDiskOfferings(id=do["id"]) == {}
    assert api.listDiskOfferings(state="all") == {}            # deleted offerings never come back in lists
    e = _err(api.updateDiskOffering, id=do["id"], name="again")
    assert e["errorcode"] == 431 and "Unable to find disk offering" in e["errortext"]
    with server.db.session() as s:
        row = s.scalar(select(DiskOffering).where(DiskOffering.uuid == do["id"]))
        assert row.removed is not None and row.state == "Inactive"      # kept for the volumes that use it
        types = [ev.event_type for ev in s.scalars(select(Event).where(Event.resource_uuid == do["id"]))]
    assert types == ["DISK.OFFERING.CREATE", "DISK.OFFERING.EDIT", "DISK.OFFERING.DELETE"]


def test_customized_offering_with_min_and_max_and_the_size_rules(server):
    api = client(server)
    custom = api.createDiskOffering(name="custom", customized=True, mindisksize=5, maxdisksize=50)["diskoffering"]
    assert custom["iscustomized"] is True and custom["disksize"] == 0
    assert custom["mindisksize"] == 5 and custom["maxdisksize"] == 50
    anysize = api.createDiskOffering(name="any", customized=True)["diskoffering"]
    fixed = api.createDiskOffering(name="fixed", disksize=20)["diskoffering"]
    with server.db.session() as s:
        get = lambda u: s.scalar(select(DiskOffering).where(DiskOffering.uuid == u))  # noqa: E731
        assert offerings.disk_size_for(get(custom["id"]), 5) == 5 * GIB
        assert offerings.disk_size_for(get(custom["id"]), 50) == 50 * GIB
        for bad, why in ((4, "out of allowed range. Min: 5. Max: 50"), (51, "out of allowed range"),
                         (None, "requires a custom size"), (0, "larger than 0")):
            with pytest.raises(Exception) as e:
                offerings.disk_size_for(get(custom["id"]), bad)
            assert why in e.value.text
        # without its own range, a customized offering uses custom.diskoffering.size.min/max
        assert offerings.disk_size_for(get(anysize["id"]), 1024) == 1024 * GIB
        with pytest.raises(Exception) as e:
            offerings.disk_size_for(get(anysize["id"]), 1025)
        assert "Min: 1. Max: 1024" in e.value.text
        S.Settings(server.db).set(S.CUSTOM_DISK_MAX, 3000, session=s)
        with pytest.raises(Exception) as e:                     # storage.max.volume.size caps everything
            offerings.disk_size_for(get(anysize["id"]), 2500)
        assert "maximum size allowed is 2000 GB" in e.value.text
        assert offerings.disk_size_for(get(fixed["id"])) == 20 * GIB
        with pytest.raises(Exception) as e:
            offerings.disk_size_for(get(fixed["id"]), 30)
        assert "does not allow custom size" in e.value.text


def test_qos_and_storage_fields_round_trip(server):
    api = client(server)
    do = api.createDiskOffering(name="qos", disksize=5, miniops=100, maxiops=2000, hypervisorsnapshotreserve=20,
                                encrypt=True, disksizestrictness=True, **RATES)["diskoffering"]
    for param, value in RATES.items():
        assert do[RATE_FIELDS[param]] == value, param
    assert (do["miniops"], do["maxiops"], do["iscustomizediops"]) == (100, 2000, False)
    assert do["hypervisorsnapshotreserve"] == 20 and do["encrypt"] is True and do["disksizestrictness"] is True
    with server.db.session() as s:
        row = s.scalar(select(DiskOffering).where(DiskOffering.uuid == do["id"]))
        qos = offerings.qos_of(row)
        assert qos == {"bps_rd": 10_000_000, "bps_rd_max": 20_000_000, "bps_rd_max_length": 10,
                       "bps_wr": 5_000_000, "bps_wr_max": 8_000_000, "bps_wr_max_length": 5,
                       "iops_rd": 500, "iops_rd_max": 1000, "iops_rd_max_length": 30,
                       "iops_wr": 300, "iops_wr_max": 600, "iops_wr_max_length": 20}
        assert offerings.storage_iops_for(row) == (100, 2000)

    # updates: a new rate replaces the old one, 0 removes a limit (and what depended on it must go too)
    up = api.updateDiskOffering(id=do["id"], iopsreadrate=700, iopsreadratemax=0, iopsreadratemaxlength=0)["diskoffering"]
    assert up["diskIopsReadRate"] == 700 and "diskIopsReadRateMax" not in up and "diskIopsReadRateMaxLength" not in up
    e = _err(api.updateDiskOffering, id=do["id"], byteswriteratemax=1)
    assert e["errorcode"] == 431 and "Bytes Write rate (5000000) cannot be greater than Bytes Write maximum rate (1)" in e["errortext"]
    assert api.listDiskOfferings(id=do["id"])["diskoffering"][0]["diskBytesWriteRateMax"] == 8_000_000

    plain = api.createDiskOffering(name="plain", disksize=1)["diskoffering"]
    assert not any(f in plain for f in RATE_FIELDS.values()) and "miniops" not in plain
    with server.db.session() as s:
        row = s.scalar(select(DiskOffering).where(DiskOffering.uuid == plain["id"]))
        assert set(offerings.qos_of(row).values()) == {None}


def test_customized_iops(server):
    api = client(server)
    do = api.createDiskOffering(name="ciops", disksize=1, customizediops=True)["diskoffering"]
    assert do["iscustomizediops"] is True and "miniops" not in do
    with server.db.session() as s:
        row = s.scalar(select(DiskOffering).where(DiskOffering.uuid == do["id"]))
        assert offerings.storage_iops_for(row, 100, 500) == (100, 500)
        with pytest.raises(Exception) as e:
            offerings.storage_iops_for(row, 600, 500)
        assert "less than or equal to the max IOPS" in e.value.text


BAD_DISK = [
    ({"disksize": 0}, "at least 1 GB"),
    ({}, "Disksize is required for a non-customized disk offering"),
    ({"disksize": -5}, "at least 1 GB"),
    ({"disksize": 2001}, "The maximum size for a disk is 2000 GB"),
    ({"customized": True, "disksize": 10}, "Disksize is not allowed for a customized disk offering"),
    ({"customized": True, "mindisksize": 60, "maxdisksize": 50}, "mindisksize (60 GB) cannot be greater than maxdisksize (50 GB)"),
    ({"disksize": 5, "mindisksize": 1}, "only to a customized disk offering"),
    ({"disksize": 5, "miniops": 500, "maxiops": 100}, "min IOPS must be less than or equal to the max IOPS"),
    ({"disksize": 5, "miniops": -1}, "min IOPS must be greater than 0"),
    ({"disksize": 5, "customizediops": True, "miniops": 100, "maxiops": 200}, "cannot be given with customizediops=true"),
    ({"disksize": 5, "bytesreadrate": -1}, "rates must be positive"),
    ({"disksize": 5, "iopswriteratemax": -10}, "rates must be positive"),
    ({"disksize": 5, "iopsreadrate": 100, "iopsreadratemax": 50}, "IOPS Read rate (100) cannot be greater than IOPS Read maximum rate (50)"),
    ({"disksize": 5, "bytesreadratemax": 50}, "bytesreadratemax needs bytesreadrate"),
    ({"disksize": 5, "iopsreadrate": 1, "iopsreadratemaxlength": 5}, "iopsreadratemaxlength needs iopsreadratemax"),
    ({"disksize": 5, "provisioningtype": "thick"}, "Invalid provisioning type thick"),
    ({"disksize": 5, "storagetype": "remote"}, "Invalid storage type remote specified, valid types are: 'local' and 'shared'"),
    ({"disksize": 5, "cachemode": "unsafe"}, "Invalid cache mode (unsafe)"),
    ({"disksize": 5, "hypervisorsnapshotreserve": -1}, "Hypervisor Snapshot Reserve must be greater than or equal to 0"),
    ({"disksize": "ten"}, "invalid value 'ten' for parameter disksize"),
]


@pytest.mark.parametrize("bad,why", BAD_DISK, ids=[w[:40] for _, w in BAD_DISK])
def test_bad_disk_offerings_are_refused_and_nothing_is_created(cs, server, bad, why):
    e = _err(cs.createDiskOffering, name="bad", **bad)
    assert e["errorcode"] == 431 and why in e["errortext"], e
    assert cs.listDiskOfferings(state="all") == {}
    with server.db.session() as s:
        assert s.scalar(select(DiskOffering.id)) is None
        assert s.scalar(select(Event.id).where(Event.event_type.like("%OFFERING%"))) is None


def test_only_admins_change_offerings(server):
    api = client(server)
    do = api.createDiskOffering(name="d", disksize=1)["diskoffering"]
    _, alice = _user_api(server, api, "alice")
    for call, kw in ((alice.createDiskOffering, {"name": "x", "disksize": 1}),
                     (alice.updateDiskOffering, {"id": do["id"], "name": "y"}),
                     (alice.deleteDiskOffering, {"id": do["id"]}),
                     (alice.createServiceOffering, {"name": "x", "cpuspeed": 1})):
        e = _err(call, **kw)
        assert e["errorcode"] in (431, 432, 531), e
    assert api.listDiskOfferings()["diskoffering"][0]["name"] == "d"


def test_users_see_public_offerings_and_their_domains_only(server_any_db):
    server = server_any_db
    api = client(server)
    sub = api.createDomain(name="sub")["domain"]
    subsub = api.createDomain(name="subsub", parentdomainid=sub["id"])["domain"]
    other = api.createDomain(name="other")["domain"]
    api.createDiskOffering(name="public", disksize=1)
    for_sub = api.createDiskOffering(name="for-sub", disksize=1, domainid=sub["id"])["diskoffering"]
    api.createDiskOffering(name="for-other", disksize=1, domainid=other["id"])
    api.createDiskOffering(name="hidden", disksize=1, displayoffering=False)
    api.createServiceOffering(name="so-public", cpunumber=1, cpuspeed=1000, memory=512)
    api.createServiceOffering(name="so-other", cpunumber=1, cpuspeed=1000, memory=512, domainid=other["id"])
    assert for_sub["domainid"] == sub["id"] and for_sub["domain"] == "sub"

    _, root_user = _user_api(server, api, "rootuser")
    _, sub_user = _user_api(server, api, "subuser", domainid=sub["id"])
    _, deep_user = _user_api(server, api, "deepuser", domainid=subsub["id"])
    assert _names(root_user.listDiskOfferings(), "diskoffering") == ["public"]
    assert _names(sub_user.listDiskOfferings(), "diskoffering") == ["for-sub", "public"]
    assert _names(deep_user.listDiskOfferings(), "diskoffering") == ["for-sub", "public"]   # subdomains inherit
    assert _names(deep_user.listServiceOfferings(), "serviceoffering") == ["so-public"]
    assert _names(api.listDiskOfferings(), "diskoffering") == ["for-other", "for-sub", "hidden", "public"]
    assert _names(api.listDiskOfferings(domainid=sub["id"]), "diskoffering") == ["for-sub"]
    assert _names(api.listServiceOfferings(domainid=other["id"]), "serviceoffering") == ["so-other"]
    with pytest.raises(CloudStackApiException):
        sub_user.listDiskOfferings(domainid=other["id"])

    # the same rules for the volume code
    with server.db.session() as s:
        from volstack.services.context import CallContext
        row = s.scalar(select(DiskOffering).where(DiskOffering.uuid == for_sub["id"]))
        dom_other = s.scalar(select(DiskOffering.domain_ids).where(DiskOffering.name == "for-other"))
        user_ctx = CallContext(user_id=0, account_id=0, domain_id=int(dom_other), domain_path="/other/", account_type=0)
        with pytest.raises(Exception) as e:
            offerings.get_disk_offering(s, user_ctx, row.uuid)
        assert e.value.errorcode == 531


def test_zone_restriction(server):
    api = client(server)
    z1 = api.createZone(name="z1", networktype="Advanced")["zone"]
    z2 = api.createZone(name="z2", networktype="Advanced")["zone"]
    do = api.createDiskOffering(name="z1-only", disksize=1, zoneid=z1["id"])["diskoffering"]
    api.createDiskOffering(name="everywhere", disksize=1)
    assert do["zoneid"] == z1["id"] and do["zone"] == "z1"
    assert _names(api.listDiskOfferings(zoneid=z1["id"]), "diskoffering") == ["everywhere", "z1-only"]
    assert _names(api.listDiskOfferings(zoneid=z2["id"]), "diskoffering") == ["everywhere"]
    up = api.updateDiskOffering(id=do["id"], zoneid=f"{z1['id']},{z2['id']}")["diskoffering"]
    assert sorted(up["zoneid"].split(",")) == sorted([z1["id"], z2["id"]])
    assert "zoneid" not in api.updateDiskOffering(id=do["id"], zoneid="all")["diskoffering"]
    e = _err(api.updateDiskOffering, id=do["id"], zoneid="not-a-zone")
    assert e["errorcode"] == 431 and "invalid zone" in e["errortext"]
    e = _err(api.updateDiskOffering, id=do["id"], domainid="6f1c2f64-3a53-4c57-9d7a-5a0d2b9e6a11")
    assert e["errorcode"] == 431 and "invalid domain" in e["errortext"]


def test_state_filter_and_inactive_offerings(server):
    api = client(server)
    do = api.createDiskOffering(name="retired", disksize=1)["diskoffering"]
    api.createDiskOffering(name="current", disksize=1)
    assert api.updateDiskOffering(id=do["id"], state="inactive")["diskoffering"]["state"] == "Inactive"
    assert _names(api.listDiskOfferings(), "diskoffering") == ["current"]
    assert _names(api.listDiskOfferings(state="Inactive"), "diskoffering") == ["retired"]
    assert _names(api.listDiskOfferings(state="all"), "diskoffering") == ["current", "retired"]
    assert _err(api.listDiskOfferings, state="gone")["errorcode"] == 431
    with server.db.session() as s:
        from volstack.services.context import system_context
        with pytest.raises(Exception) as e:
            offerings.get_disk_offering(s, system_context(), do["id"])
        assert "not active" in e.value.text


# ---------------------------------------------------------------- service offerings

def test_service_offering_creates_its_own_compute_only_disk_offering(server):
    api = client(server)
    so = api.createServiceOffering(name="tiny", cpunumber=1, cpuspeed=1000, memory=512, rootdisksize=8,
                                   tags="ssd", hosttags="eco", isvolatile=True, storagetype="local",
                                   provisioningtype="fat", cachemode="none", iopsreadrate=100,
                                   miniops=10, maxiops=20, encryptroot=True)["serviceoffering"]
    assert (so["cpunumber"], so["cpuspeed"], so["memory"], so["rootdisksize"]) == (1, 1000, 512, 8)
    assert so["storagetags"] == "ssd" and so["hosttags"] == "eco" and so["isvolatile"] is True
    assert so["storagetype"] == "local" and so["provisioningtype"] == "fat" and so["cacheMode"] == "none"
    assert so["diskIopsReadRate"] == 100 and (so["miniops"], so["maxiops"]) == (10, 20) and so["encryptroot"] is True
    assert so["issystem"] is False and so["iscustomized"] is False and so["state"] == "Active"
    # the storage half is a disk offering of its own, hidden from listDiskOfferings
    assert so["diskofferingid"] and api.listDiskOfferings() == {}
    assert api.listDiskOfferings(id=so["diskofferingid"]) == {}
    with server.db.session() as s:
        do = s.scalar(select(DiskOffering).where(DiskOffering.uuid == so["diskofferingid"]))
        assert do.compute_only and do.disk_size == 8 * GIB and do.tags == "ssd"
        row = s.scalar(select(ServiceOffering).where(ServiceOffering.uuid == so["id"]))
        assert offerings.qos_of(row)["iops_rd"] == 100
        assert offerings.disk_size_for(row) == 8 * GIB and offerings.disk_size_for(row, 8) == 8 * GIB
        with pytest.raises(Exception) as e:
            offerings.disk_size_for(row, 20)
        assert "cannot be given" in e.value.text
    e = _err(api.deleteDiskOffering, id=so["diskofferingid"])
    assert e["errorcode"] == 431 and "delete the service offering instead" in e["errortext"]

    up = api.updateServiceOffering(id=so["id"], name="tiny2", displaytext="Tiny", storagetags="nvme,ssd",
                                   hosttags="fast")["serviceoffering"]
    assert (up["name"], up["displaytext"], up["storagetags"], up["hosttags"]) == ("tiny2", "Tiny", "nvme,ssd", "fast")
    assert api.listServiceOfferings(name="tiny2")["serviceoffering"][0] == up
    assert api.deleteServiceOffering(id=so["id"]) == {"success": True}
    assert api.listServiceOfferings() == {}
    with server.db.session() as s:
        do = s.scalar(select(DiskOffering).where(DiskOffering.uuid == so["diskofferingid"]))
        assert do.removed is not None and do.state == "Inactive"
        types = [ev.event_type for ev in s.scalars(select(Event).where(Event.resource_uuid == so["id"]))]
    assert types == ["SERVICE.OFFERING.CREATE", "SERVICE.OFFERING.EDIT", "SERVICE.OFFERING.DELETE"]


def test_service_offering_linked_to_an_existing_disk_offering(server):
    api = client(server)
    do = api.createDiskOffering(name="root20", disksize=20, tags="gold", iopswriterate=50)["diskoffering"]
    so = api.createServiceOffering(name="linked", cpunumber=2, cpuspeed=2000, memory=1024, diskofferingid=do["id"],
                                   diskofferingstrictness=True)["serviceoffering"]
    assert so["diskofferingid"] == do["id"] and so["diskofferingname"] == "root20"
    assert so["diskofferingstrictness"] is True and so["rootdisksize"] == 20 and so["storagetags"] == "gold"
    assert so["diskIopsWriteRate"] == 50
    e = _err(api.createServiceOffering, name="both", cpuspeed=1, diskofferingid=do["id"], tags="x", rootdisksize=5)
    assert e["errorcode"] == 431 and "rootdisksize, tags cannot be given with diskofferingid" in e["errortext"]
    e = _err(api.updateServiceOffering, id=so["id"], storagetags="silver")
    assert e["errorcode"] == 431 and "update that disk offering instead" in e["errortext"]
    # deleting the service offering leaves the shared disk offering alone
    api.deleteServiceOffering(id=so["id"])
    assert api.listDiskOfferings(id=do["id"])["diskoffering"][0]["state"] == "Active"
    api.deleteDiskOffering(id=do["id"])
    e = _err(api.createServiceOffering, name="gone", cpuspeed=1, diskofferingid=do["id"])
    assert e["errorcode"] == 431 and "valid disk offering" in e["errortext"]


BAD_SERVICE = [
    ({"cpunumber": 1, "memory": 512}, "cpu speed"),
    ({"cpunumber": 0, "cpuspeed": 1}, "cpu number"),
    ({"cpuspeed": 1, "memory": 16}, "memory value between 32"),
    ({"customized": True, "cpunumber": 2}, "cpu and memory all should be null"),
    ({"cpuspeed": 1, "rootdisksize": 0}, "Root disk size is of 0 GB but it must be greater than 0"),
    ({"cpuspeed": 1, "rootdisksize": 5000}, "maximum size for a disk is 2000 GB"),
    ({"cpuspeed": 1, "storagetype": "nas"}, "Invalid storage type nas"),
    ({"cpuspeed": 1, "provisioningtype": "lazy"}, "Invalid provisioning type lazy"),
    ({"cpuspeed": 1, "cachemode": "directsync"}, "Invalid cache mode (directsync)"),
    ({"cpuspeed": 1, "miniops": 9, "maxiops": 3}, "min IOPS must be less than or equal to the max IOPS"),
    ({"cpuspeed": 1, "customizediops": True, "maxiops": 3}, "customizediops=true"),
    ({"cpuspeed": 1, "byteswriterate": -3}, "rates must be positive"),
    ({"cpuspeed": 1, "issystem": True}, "System VM offerings are not supported"),
]


@pytest.mark.parametrize("bad,why", BAD_SERVICE, ids=[w[:40] for _, w in BAD_SERVICE])
def test_bad_service_offerings_are_refused_and_nothing_is_created(cs, server, bad, why):
    e = _err(cs.createServiceOffering, name="bad", **bad)
    assert e["errorcode"] == 431 and why in e["errortext"], e
    with server.db.session() as s:
        assert s.scalar(select(ServiceOffering.id)) is None and s.scalar(select(DiskOffering.id)) is None


def test_customized_service_offering_and_system_filters(server):
    api = client(server)
    so = api.createServiceOffering(name="custom", customized=True)["serviceoffering"]
    assert so["iscustomized"] is True and "cpunumber" not in so and so["rootdisksize"] == 0
    assert _names(api.listServiceOfferings(issystem=False), "serviceoffering") == ["custom"]
    assert api.listServiceOfferings(issystem=True) == {}
    assert api.listServiceOfferings(systemvmtype="domainrouter") == {}


# ---------------------------------------------------------------- idempotent clients

def _expected(param, value):
    """The value a response carries for a request value: lists come back comma-separated, the enum
    strings lowercase."""
    if isinstance(value, list):
        return ",".join(value)
    if param in ("storagetype", "provisioningtype", "cachemode"):
        return value.lower()
    return value


def test_every_accepted_parameter_is_echoed_under_cloudstacks_name(server_any_db):
    """Ansible's cs_* modules compare what they send with what comes back: every parameter volstack
    accepts must come back, under the name CloudStack uses, with the value that was sent."""
    server = server_any_db
    api = client(server)
    zone = api.createZone(name="ez", networktype="Advanced")["zone"]
    dom = api.createDomain(name="ed")["domain"]
    disk = dict(name="echo", displaytext="Echo disk", customized=True, mindisksize=2, maxdisksize=9, tags="a,b",
                storagetype="shared", provisioningtype="sparse", cachemode="writethrough", customizediops=True,
                hypervisorsnapshotreserve=15, encrypt=True, disksizestrictness=True, displayoffering=False,
                domainid=[dom["id"]], zoneid=[zone["id"]], details={"k1": "v1"}, **RATES)
    fixed_iops = dict(name="echo2", disksize=3, miniops=10, maxiops=20)
    for params in (disk, fixed_iops):
        created = api.createDiskOffering(**params)["diskoffering"]
        listed = api.listDiskOfferings(id=created["id"], state="all")["diskoffering"][0]
        for resp in (created, listed):
            for param, value in params.items():
                assert resp[DISK_ECHO[param]] == _expected(param, value), (param, resp)
    from volstack.api.registry import API
    declared = {p.name for p in API.get("createDiskOffering").params}
    assert declared == set(DISK_ECHO), declared ^ set(DISK_ECHO)

    service = dict(name="secho", displaytext="Echo service", cpunumber=2, cpuspeed=1500, memory=2048,
                   isvolatile=True, issystem=False, hosttags="h1,h2", domainid=[dom["id"]], zoneid=[zone["id"]],
                   diskofferingstrictness=True, rootdisksize=12, tags="t1", storagetype="local",
                   provisioningtype="thin", customizediops=False, miniops=5, maxiops=50,
                   hypervisorsnapshotreserve=10, cachemode="writeback", encryptroot=True, **RATES)
    created = api.createServiceOffering(**service)["serviceoffering"]
    listed = api.listServiceOfferings(id=created["id"])["serviceoffering"][0]
    for resp in (created, listed):
        for param, value in service.items():
            assert resp[SERVICE_ECHO[param]] == _expected(param, value), (param, resp)
    linked_do = api.createDiskOffering(name="base", disksize=4)["diskoffering"]
    linked = dict(name="slinked", customized=True, diskofferingid=linked_do["id"], diskofferingstrictness=False)
    created = api.createServiceOffering(**linked)["serviceoffering"]
    for param, value in linked.items():
        assert created[SERVICE_ECHO[param]] == value, param
    declared = {p.name for p in API.get("createServiceOffering").params}
    assert declared == set(SERVICE_ECHO), declared ^ set(SERVICE_ECHO)

    # what the update commands accept comes back too
    up = api.updateDiskOffering(id=linked_do["id"], name="base2", displaytext="B", displayoffering=False, tags="z",
                                cachemode="none", state="Active", domainid=dom["id"], zoneid=zone["id"],
                                **RATES)["diskoffering"]
    assert (up["name"], up["displaytext"], up["displayoffering"], up["tags"], up["cacheMode"], up["state"],
            up["domainid"], up["zoneid"]) == ("base2", "B", False, "z", "none", "Active", dom["id"], zone["id"])
    assert all(up[RATE_FIELDS[p]] == v for p, v in RATES.items())
    so = api.updateServiceOffering(id=listed["id"], name="s2", displaytext="S", storagetags="x,y", hosttags="q",
                                   state="Active", domainid="public", zoneid="all")["serviceoffering"]
    assert (so["name"], so["displaytext"], so["storagetags"], so["hosttags"], so["state"]) == ("s2", "S", "x,y", "q", "Active")
    assert "domainid" not in so and "zoneid" not in so


def test_new_tags_must_be_on_the_pools_of_the_offerings_volumes(server):
    from volstack.db.models import Zone
    from volstack.db.storage_models import StoragePool, Volume
    api = client(server)
    zone = api.createZone(name="tz", networktype="Advanced")["zone"]
    do = api.createDiskOffering(name="tagged", disksize=1, tags="ssd")["diskoffering"]
    with server.db.session() as s:
        zid = s.scalar(select(Zone.id).where(Zone.uuid == zone["id"]))
        pool = StoragePool(name="p1", pool_type="Filesystem", scope="ZONE", zone_id=zid, url="file:///x", path="/x",
                           tags="ssd,fast", state="Up")
        s.add(pool)
        s.flush()
        offering_id = s.scalar(select(DiskOffering.id).where(DiskOffering.uuid == do["id"]))
        s.add(Volume(name="v1", volume_type="DATADISK", size=GIB, zone_id=zid, pool_id=pool.id, account_id=2,
                     domain_id=1, disk_offering_id=offering_id, state="Ready"))
        pool_uuid = pool.uuid
    assert api.updateDiskOffering(id=do["id"], tags="fast,ssd")["diskoffering"]["tags"] == "fast,ssd"
    e = _err(api.updateDiskOffering, id=do["id"], tags="nvme")
    assert e["errorcode"] == 431 and "pool p1 doesn't have the new tags (v1)" in e["errortext"]
    assert _names(api.listDiskOfferings(storageid=pool_uuid), "diskoffering") == ["tagged"]
    api.createDiskOffering(name="gold", disksize=1, tags="gold")
    api.createDiskOffering(name="untagged", disksize=1)
    api.createDiskOffering(name="local", disksize=1, storagetype="local")
    assert _names(api.listDiskOfferings(storageid=pool_uuid), "diskoffering") == ["tagged", "untagged"]
