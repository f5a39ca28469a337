"""The wire protocol of /client/api, as CloudStack's clients expect it (reference §1)."""
import re
import xml.etree.ElementTree as ET


import requests

from support import client, start_server
from helpers import expires, get, post, signed, wait_job
from volstack.api.signing import sign


def test_get_and_post_give_the_same_envelope(server):
    for send in (get, post):
        r = send(server, {"command": "listZones"})
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("application/json")
        assert list(r.json()) == ["listzonesresponse"]


def test_signature_without_expiry_is_accepted(server):
    r = get(server, {"command": "listZones"}, version3=False)
    assert r.status_code == 200


def test_wrong_signature_unknown_key_and_expired_are_401(server):
    p = signed(server, {"command": "listZones"})
    p["signature"] = "AAAA" + p["signature"][4:]
    for params in (p, signed(server, {"command": "listZones"}, key="nobody", secret="x"),
                   signed(server, {"command": "listZones", "expires": expires(-5)})):
        r = requests.get(server.endpoint, params=params, timeout=10)
        assert r.status_code == 401
        body = r.json()["listzonesresponse"]
        assert body["errorcode"] == 401 and "unable to verify user credentials" in body["errortext"]
        assert r.headers["X-Description"] == body["errortext"]
    r = requests.get(server.endpoint, params={"command": "listZones", "response": "json"}, timeout=10)
    assert r.status_code == 401


def test_missing_expires_with_version3_is_401(server):
    p = {"apiKey": server.admin.api_key, "command": "listZones", "response": "json", "signatureVersion": "3"}
    p["signature"] = sign(p, server.admin_secret)
    assert requests.get(server.endpoint, params=p, timeout=10).status_code == 401


def test_tilde_is_accepted_in_both_encodings(server):
    for keep in (False, True):
        r = get(server, {"command": "listZones", "keyword": "a~b"}, keep_tilde=keep)
        assert r.status_code == 200, r.text


def test_parameter_names_are_case_insensitive(server):
    api = client(server)
    api.createZone(name="zc", networktype="Advanced")
    r = get(server, {"COMMAND": "listZones", "Name": "zc"})
    assert r.status_code == 200 and r.json()["listzonesresponse"]["zone"][0]["name"] == "zc"
    # cloudmonkey writes signatureversion in lower case
    r = get(server, {"command": "listZones", "signatureversion": "3", "expires": expires(-1)}, version3=False)
    assert r.status_code == 401


def test_unknown_command_is_432_with_errorresponse(server):
    r = get(server, {"command": "fooBar"})
    assert r.status_code == 432
    assert r.json()["errorresponse"]["errorcode"] == 432


def test_xml_is_the_default_format(server):
    p = signed(server, {"command": "listZones"})
    del p["response"]
    p["signature"] = sign(p, server.admin_secret)
    r = requests.get(server.endpoint, params=p, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/xml")
    root = ET.fromstring(r.content)
    assert root.tag == "listzonesresponse" and root.get("cloud-stack-version")


def test_xml_errors_carry_code_and_text(server):
    p = signed(server, {"command": "createZone"})
    p["response"] = "xml"
    p["signature"] = sign(p, server.admin_secret)
    r = requests.get(server.endpoint, params=p, timeout=10)
    assert r.status_code == 431
    root = ET.fromstring(r.content)
    assert root.find("errorcode").text == "431"
    assert "missing parameter name" in root.find("errortext").text


def test_empty_list_is_an_empty_object_and_count_is_total(server):
    api = client(server)
    assert get(server, {"command": "listZones", "name": "none"}).json() == {"listzonesresponse": {}}
    for i in range(5):
        api.createZone(name=f"p{i}", networktype="Advanced")
    body = get(server, {"command": "listZones", "keyword": "p", "page": 2, "pagesize": 2}).json()["listzonesresponse"]
    assert body["count"] == 5 and [z["name"] for z in body["zone"]] == ["p2", "p3"]
    assert len(api.listZones(fetch_list=True)) == 5


def test_page_and_pagesize_rules(server):
    for params in ({"page": 1}, {"pagesize": 5}, {"page": 1, "pagesize": -1}, {"page": 1, "pagesize": 501},
                   {"page": 0, "pagesize": 5}, {"page": "x", "pagesize": 5}):
        r = get(server, {"command": "listZones", **params})
        assert r.status_code == 431, params
        assert r.json()["listzonesresponse"]["cserrorcode"] == 4350
    assert get(server, {"command": "listZones", "pagesize": -1}).status_code == 200


def test_null_fields_are_omitted_and_dates_are_cloudstack_format(server):
    z = client(server).createZone(name="nulls", networktype="Advanced")["zone"]
    assert "dns2" not in z and "description" not in z
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0000", z["created"])


def test_missing_bad_and_overlong_parameters_are_431_with_cloudstack_texts(server):
    r = get(server, {"command": "createZone", "networktype": "Advanced"})
    assert r.status_code == 431
    assert r.json()["createzoneresponse"]["errortext"] == \
        "Unable to execute API command createzone due to missing parameter name"
    r = get(server, {"command": "listZones", "id": "not-a-uuid"})
    assert r.status_code == 431 and "invalid value" in r.json()["listzonesresponse"]["errortext"]
    r = get(server, {"command": "listZones", "id": "6f1c2f64-3a53-4c57-9d7a-5a0d2b9e6a11"})
    assert r.status_code == 431 and "entity does not exist" in r.json()["listzonesresponse"]["errortext"]
    r = get(server, {"command": "createZone", "networktype": "Advanced", "name": "x" * 256})
    assert r.status_code == 431
    assert r.json()["createzoneresponse"]["errortext"] == "Value greater than max allowed length 255 for param: name"


def test_map_parameters_group_by_index_and_malformed_maps_are_431(server):
    r = get(server, {"command": "createAccount", "username": "m1", "password": "pw", "accounttype": 0,
                     "details[0].key": "a", "details[0].value": "b"})
    assert r.status_code == 200, r.text
    r = get(server, {"command": "createAccount", "username": "m2", "password": "pw", "accounttype": 0,
                     "details[0.key": "a"})
    assert r.status_code == 431
    assert "Unable to decode parameter" in r.json()["createaccountresponse"]["errortext"]


def test_login_session_and_logout(tmp_path):
    ms = start_server(f"sqlite:///{tmp_path / 'db'}", tmp_path, admin_password="s3cret")
    try:
        s = requests.Session()
        r = s.post(ms.endpoint, params={"command": "login", "response": "json"},
                   data={"username": "admin", "password": "s3cret", "domain": "/"}, timeout=10)
        assert r.status_code == 200, r.text
        key = r.json()["loginresponse"]["sessionkey"]
        assert s.cookies.get("sessionkey") == key
        r = s.get(ms.endpoint, params={"command": "listZones", "response": "json", "sessionkey": key}, timeout=10)
        assert r.status_code == 200
        # the cookie alone is not enough (CSRF), nor the key alone
        assert s.get(ms.endpoint, params={"command": "listZones", "response": "json"}, timeout=10).status_code == 401
        assert requests.get(ms.endpoint, params={"command": "listZones", "response": "json", "sessionkey": key},
                            timeout=10).status_code == 401
        r = s.get(ms.endpoint, params={"command": "logout", "response": "json", "sessionkey": key}, timeout=10)
        assert r.json() == {"logoutresponse": {"description": "success"}}
        r = s.get(ms.endpoint, params={"command": "listZones", "response": "json", "sessionkey": key}, timeout=10)
        assert r.status_code == 401
        assert [e["type"] for e in client(ms).listEvents()["event"][:2]] == ["USER.LOGOUT", "USER.LOGIN"]
        bad = requests.post(ms.endpoint, params={"command": "login", "response": "json"},
                            data={"username": "admin", "password": "wrong"}, timeout=10)
        assert bad.status_code == 531 and "sessionkey" not in bad.text     # CloudStack: account error
        assert requests.get(ms.endpoint, params={"command": "login", "response": "json", "username": "admin",
                                                 "password": "s3cret"}, timeout=10).status_code == 405
    finally:
        ms.stop()


def test_async_command_returns_jobid_and_job_result(server):
    api = client(server)
    acc = api.createAccount(username="u1", password="pw", accounttype=0, email="a@b.c", firstname="a", lastname="b")["account"]
    r = get(server, {"command": "disableAccount", "id": acc["id"], "lock": "false"})
    jobid = r.json()["disableaccountresponse"]["jobid"]
    job = wait_job(server, jobid)
    assert job["jobresult"]["account"]["state"] == "disabled"
    assert (job["jobstatus"], job["jobresultcode"], job["jobresulttype"]) == (1, 0, "object")
    assert job["cmd"] == "disableAccount" and job["jobinstancetype"] == "Account"
    jobs = client(server, fetch_result=False).listAsyncJobs()
    assert jobs["count"] == 1 and jobs["asyncjobs"][0]["jobid"] == jobid


def test_async_failure_is_reported_in_the_job(server):
    api = client(server)
    r = get(server, {"command": "disableAccount", "id": _admin_account(api), "lock": "true"})
    jobid = r.json()["disableaccountresponse"]["jobid"]
    job = wait_job(server, jobid)
    assert job["jobstatus"] == 2 and job["jobresultcode"] == 531
    assert "cannot be locked" in job["jobresult"]["errortext"]


def _admin_account(api):
    return api.listAccounts(name="admin")["account"][0]["id"]



def test_non_api_paths_are_404(server):
    assert requests.get(server.endpoint.replace("/client/api", "/other"), timeout=10).status_code == 404





def test_a_nul_character_in_a_parameter_is_a_431_on_every_database(server_any_db):
    """PostgreSQL cannot store NUL in text: such a name used to fail deep in the flush with a 530."""
    for params in ({"command": "createZone", "name": "a\x00b", "networktype": "Advanced"},
                   {"command": "createDiskOffering", "name": "nul", "displaytext": "d", "disksize": "1",
                    "details[0].k": "v\x00"}):
        resp = post(server_any_db, params)
        assert resp.status_code == 431 and "contains a NUL character" in resp.text, resp.text
    assert client(server_any_db).listZones() == {}
    assert client(server_any_db).listDiskOfferings(name="nul") == {}


def test_an_expired_session_is_refused_and_its_row_removed(tmp_path):
    """The expired session's row is deleted when it is refused, not kept because the refusal rolled back."""
    from datetime import timedelta

    from volstack.db.models import Session as SessionRow
    ms = start_server(f"sqlite:///{tmp_path / 'db'}", tmp_path, admin_password="s3cret")
    try:
        s = requests.Session()
        r = s.post(ms.endpoint, params={"command": "login", "response": "json"},
                   data={"username": "admin", "password": "s3cret", "domain": "/"}, timeout=10)
        key = r.json()["loginresponse"]["sessionkey"]
        with ms.db.session() as db:
            [row] = db.query(SessionRow).all()
            row.last_access -= timedelta(days=1)
        r = s.get(ms.endpoint, params={"command": "listZones", "response": "json", "sessionkey": key}, timeout=10)
        assert r.status_code == 401 and "unable to verify user credentials" in r.text, r.text
        with ms.db.session() as db:
            assert db.query(SessionRow).count() == 0
    finally:
        ms.stop()
