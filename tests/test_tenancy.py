"""Domains, accounts, users, roles, keys and CloudStack's visibility rules."""
import pytest
from cs import CloudStackApiException
from sqlalchemy import select

from support import client
from volstack.db.models import User

pytestmark = pytest.mark.usefixtures("db_url")     # every test on SQLite and PostgreSQL


def _user_api(server, api, name, accounttype=0, domainid=None):
    acc = api.createAccount(username=name, password="pw-" + name, accounttype=accounttype,
                            **({"domainid": domainid} if domainid else {}))["account"]
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    return acc, client(server, keys["apikey"], keys["secretkey"])


def test_passwords_are_stored_hashed_with_argon2(server):
    api = client(server)
    _user_api(server, api, "alice")
    with server.db.session() as s:
        pw = s.scalar(select(User.password).where(User.username == "alice"))
    assert pw.startswith("$argon2") and "pw-alice" not in pw


def test_secret_keys_are_encrypted_at_rest(server):
    api = client(server)
    _, alice = _user_api(server, api, "alice")
    with server.db.session() as s:
        stored = s.scalar(select(User.secret_key).where(User.username == "alice"))
    assert stored != alice.secret and alice.secret not in stored


def test_user_sees_only_own_jobs_and_events_admin_needs_listall(server):
    api = client(server)
    acc_a, alice = _user_api(server, api, "alice")
    acc_b, bob = _user_api(server, api, "bob")
    # each user changes something of their own (their user record) and so leaves an event
    alice.updateUser(id=acc_a["user"][0]["id"], email="a@x")
    bob.updateUser(id=acc_b["user"][0]["id"], email="b@x")
    a_events = alice.listEvents()["event"]
    assert a_events and all(e["account"] == "alice" for e in a_events)
    admin_own = api.listEvents().get("event", [])
    assert all(e["account"] == "admin" for e in admin_own)
    everyone = {e["account"] for e in api.listEvents(listall=True)["event"]}
    assert {"alice", "bob", "admin"} <= everyone


def test_user_cannot_touch_another_account(server):
    api = client(server)
    acc_a, alice = _user_api(server, api, "alice")
    acc_b, _ = _user_api(server, api, "bob")
    with pytest.raises(CloudStackApiException) as e:
        alice.updateUser(id=acc_b["user"][0]["id"], email="evil@x")
    assert e.value.error["errorcode"] == 531
    with pytest.raises(CloudStackApiException) as e:
        alice.registerUserKeys(id=acc_b["user"][0]["id"])
    assert e.value.error["errorcode"] == 531
    assert [a["name"] for a in alice.listAccounts(listall=True)["account"]] == ["alice"]


def test_user_cannot_call_admin_commands(server):
    api = client(server)
    _, alice = _user_api(server, api, "alice")
    with pytest.raises(CloudStackApiException) as e:
        alice.createZone(name="z", networktype="Advanced")
    assert e.value.error["errorcode"] == 432
    names = {a["name"] for a in alice.listApis()["api"]}
    assert "listZones" in names and "createZone" not in names


def test_domain_admin_sees_its_subtree_only(server):
    api = client(server)
    sub = api.createDomain(name="sub")["domain"]
    other = api.createDomain(name="other")["domain"]
    _, dadmin = _user_api(server, api, "dadmin", accounttype=2, domainid=sub["id"])
    dadmin.createAccount(username="inside", password="pw", accounttype=0, domainid=sub["id"])
    with pytest.raises(CloudStackApiException) as e:
        dadmin.createAccount(username="outside", password="pw", accounttype=0, domainid=other["id"])
    assert e.value.error["errorcode"] == 531
    names = {a["name"] for a in dadmin.listAccounts(listall=True)["account"]}
    assert names == {"dadmin", "inside"}
    paths = {d["path"] for d in api.listDomains(listall=True)["domain"]}
    assert paths == {"ROOT", "ROOT/sub", "ROOT/other"}


def test_a_domain_admin_reaches_its_whole_subtree_by_ids_on_every_database(server_any_db):
    """The subtree is a recursive query over parent ids (SQLite and PostgreSQL): grandchildren included, a
    sibling whose name extends ours ("sub" / "sub2") never."""
    server = server_any_db
    api = client(server)
    sub = api.createDomain(name="sub")["domain"]
    grand = api.createDomain(name="grand", parentdomainid=api.createDomain(name="mid", parentdomainid=sub["id"])
                             ["domain"]["id"])["domain"]
    sub2 = api.createDomain(name="sub2")["domain"]
    _, dadmin = _user_api(server, api, "dadmin", accounttype=2, domainid=sub["id"])
    _user_api(server, api, "deep", domainid=grand["id"])
    _user_api(server, api, "beside", domainid=sub2["id"])
    assert {a["name"] for a in dadmin.listAccounts(listall=True)["account"]} == {"dadmin", "deep"}
    assert {d["name"] for d in dadmin.listDomains(listall=True)["domain"]} == {"sub", "mid", "grand"}
    assert {e["account"] for e in dadmin.listEvents(listall=True).get("event", [])} <= {"dadmin", "deep"}
    with pytest.raises(CloudStackApiException) as e:
        dadmin.updateDomain(id=sub2["id"], name="mine")
    assert e.value.error["errorcode"] == 531
    with pytest.raises(CloudStackApiException) as e:
        dadmin.updateDomain(id=sub["id"], name="SUB2")
    assert e.value.error["errorcode"] == 431 and "already exists" in e.value.error["errortext"]


def test_update_resource_count_of_a_domain_stays_in_its_subtree(server):
    """A '_' in a domain path is no LIKE wildcard: recounting domain a_b never reaches (nor names) the accounts of
    a sibling aXb."""
    api = client(server)
    ab = api.createDomain(name="a_b")["domain"]
    axb = api.createDomain(name="aXb")["domain"]
    _, dadmin = _user_api(server, api, "dadmin", accounttype=2, domainid=ab["id"])
    _user_api(server, api, "stranger", domainid=axb["id"])
    counted = dadmin.updateResourceCount(domainid=ab["id"])["resourcecount"]
    assert {r["account"] for r in counted} == {"dadmin"}


def test_disable_enable_and_delete_account(server):
    api = client(server)
    acc, alice = _user_api(server, api, "alice")
    assert alice.listZones() == {}
    assert api.disableAccount(id=acc["id"], lock=False)["account"]["state"] == "disabled"
    with pytest.raises(CloudStackApiException) as e:
        alice.listZones()
    assert e.value.error["errorcode"] == 401
    assert api.enableAccount(id=acc["id"])["account"]["state"] == "enabled"
    assert alice.listZones() == {}
    assert api.deleteAccount(id=acc["id"])["success"] is True
    assert api.listAccounts(name="alice", listall=True) == {}
    with pytest.raises(CloudStackApiException) as e:
        alice.listZones()
    assert e.value.error["errorcode"] == 401


def test_register_user_keys_replaces_old_keys(server):
    api = client(server)
    acc, alice = _user_api(server, api, "alice")
    new = alice.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    with pytest.raises(CloudStackApiException):
        alice.listZones()
    assert client(server, new["apikey"], new["secretkey"]).listZones() == {}


def test_resource_limits_have_cloudstack_defaults_and_can_be_changed(server):
    api = client(server)
    _user_api(server, api, "alice")
    acc = api.listAccounts(name="alice", listall=True)["account"][0]
    assert acc["volumelimit"] == "20" and acc["snapshotlimit"] == "20" and acc["volumetotal"] == 0
    limits = {r["resourcetypename"]: r["max"] for r in api.listResourceLimits(account="alice", domainid=acc["domainid"])["resourcelimit"]}
    assert limits["volume"] == 20 and limits["primary_storage"] == 200
    api.updateResourceLimit(account="alice", domainid=acc["domainid"], resourcetype=2, max=3)
    assert api.listAccounts(name="alice", listall=True)["account"][0]["volumelimit"] == "3"
    api.updateConfiguration(name="max.account.snapshots", value="7")
    assert api.listAccounts(name="alice", listall=True)["account"][0]["snapshotlimit"] == "7"


def test_check_limit_refuses_with_535(server):
    from volstack.db import counters
    from volstack.errors import ResourceLimitExceeded
    from volstack.services import limits
    api = client(server)
    acc, _ = _user_api(server, api, "alice")
    with server.db.session() as s:
        acc_id = s.scalar(select(User.account_id).where(User.username == "alice"))
        counters.set_count(s, "account", acc_id, "volume", 20)         # as if alice had 20 volumes
        with pytest.raises(ResourceLimitExceeded) as e:
            limits.check_limit(s, acc_id, "volume")
        assert "Account Resource Limit = 20" in e.value.text and "Current Account Resource Amount = 20" in e.value.text
        limits.check_limit(s, 2, "volume")   # root admin: unlimited
