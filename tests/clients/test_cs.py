"""The `cs` 5.2.0 CLI and library (exoscale/cs) against a live volstack management server."""
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
from cs import CloudStackApiException

from clienttools import CS_BIN, client_env, cs_env, describe, run
from support import client, start_server
from volstack.api.signing import sign


@pytest.fixture
def cli(server, tmp_path):
    """cs(*args, ok=True) runs the real `cs` CLI against the test server; returns (proc, parsed JSON)."""
    env = cs_env(server, tmp_path / "home", CLOUDSTACK_POLL_INTERVAL="0.05")

    def cs(*args, ok=True, cwd=None, env_override=None):
        proc = run([CS_BIN, *args], env=env_override or env, cwd=cwd or tmp_path)
        if ok is not None:
            assert (proc.returncode == 0) == ok, describe(proc)
        body = json.loads(proc.stdout) if proc.stdout.strip() else {}
        return proc, body
    return cs


def _poll_job(cs, jobid, deadline_s=30):
    """Query the job with the CLI until it is done (each call is a real round trip)."""
    end = time.monotonic() + deadline_s
    while True:
        _, job = cs("queryAsyncJobResult", f"jobid={jobid}")
        if job["jobstatus"] != 0 or time.monotonic() > end:
            return job


# ---------------------------------------------------------------- discovery and zones

def test_list_apis_describes_every_command(cli):
    _, body = cli("listApis")
    names = {a["name"] for a in body["api"]}
    assert body["count"] == len(body["api"])
    assert {"listZones", "createZone", "updateZone", "deleteZone", "queryAsyncJobResult", "deleteAccount",
            "listApis", "login", "logout"} <= names
    by_name = {a["name"]: a for a in body["api"]}
    assert by_name["deleteAccount"]["isasync"] is True and by_name["listZones"]["isasync"] is False
    for api in body["api"]:
        for p in api["params"]:
            assert isinstance(p["required"], bool) and int(p["length"]) > 0, (api["name"], p)
    _, one = cli("listApis", "name=createZone")
    [api] = one["api"]
    required = {p["name"] for p in api["params"] if p["required"]}
    assert required == {"name", "networktype"}
    assert {"id", "name", "networktype", "allocationstate"} <= {r["name"] for r in api["response"]}


def test_list_capabilities(cli):
    _, body = cli("listCapabilities")
    cap = body["capability"]
    assert cap["cloudstackversion"] and cap["kvmsnapshotenabled"] is True
    assert isinstance(cap["customdiskofferingmaxsize"], int)


def test_zone_create_list_update_delete(cli):
    proc, empty = cli("listZones")
    assert empty == {} and proc.stdout == ""              # {"listzonesresponse": {}}: cs prints nothing
    _, created = cli("createZone", "name=cs-zone", "networktype=Advanced", "dns1=8.8.8.8",
                     "description=made~by cs")            # cs leaves '~' unencoded while signing
    zone = created["zone"]
    assert zone["name"] == "cs-zone" and zone["networktype"] == "Advanced" and zone["dns1"] == "8.8.8.8"
    assert zone["description"] == "made~by cs" and zone["allocationstate"] == "Enabled"
    assert zone["localstorageenabled"] is False and zone["securitygroupsenabled"] is False
    assert "dns2" not in zone                            # null fields are omitted

    cli("createZone", "name=cs-zone-2", "networktype=Basic")
    _, listed = cli("listZones", "name=cs-zone")
    assert listed["count"] == 1 and [z["id"] for z in listed["zone"]] == [zone["id"]]
    _, listed = cli("listZones")
    assert listed["count"] == 2

    _, updated = cli("updateZone", f"id={zone['id']}", "name=cs-zone-renamed", "dns2=8.8.4.4",
                     "allocationstate=Disabled")
    assert updated["zone"]["name"] == "cs-zone-renamed" and updated["zone"]["dns2"] == "8.8.4.4"
    assert updated["zone"]["allocationstate"] == "Disabled"
    _, listed = cli("listZones", f"id={zone['id']}")
    assert listed["zone"][0]["name"] == "cs-zone-renamed"

    _, deleted = cli("deleteZone", f"id={zone['id']}")
    assert deleted == {"success": True}
    _, listed = cli("listZones", "name=cs-zone-renamed")
    assert listed == {}


def test_post_requests(cli):
    proc, created = cli("--post", "-t", "createZone", "name=posted zone", "networktype=Advanced")
    # the trace shows a form-encoded POST body carrying the signature version 3 fields
    assert "POST " in proc.stderr and "application/x-www-form-urlencoded" in proc.stderr
    assert "signatureVersion=3" in proc.stderr and "expires=" in proc.stderr
    assert created["zone"]["name"] == "posted zone"
    _, listed = cli("--post", "listZones", "name=posted zone")
    assert listed["zone"][0]["id"] == created["zone"]["id"]


def test_get_requests_carry_signature_version_3(cli):
    proc, _ = cli("-t", "listZones", "name=nothing")
    request_line = next(line for line in proc.stderr.splitlines() if line.startswith("GET "))
    assert "signatureVersion=3" in request_line and "expires=" in request_line and "signature=" in request_line


def test_api_errors(cli):
    proc, body = cli("listZones", "id=not-a-uuid", ok=False)
    err = body["listzonesresponse"]
    assert err["errorcode"] == 431 and err["cserrorcode"] == 4350 and "id" in err["errortext"]
    assert "HTTP 431 response from CloudStack" in proc.stderr
    proc, body = cli("noSuchCommand", ok=False)
    assert body["errorresponse"]["errorcode"] == 432
    _, body = cli("createZone", "name=incomplete", ok=False)
    assert "networktype" in body["createzoneresponse"]["errortext"]


# ---------------------------------------------------------------- async jobs

def test_async_job_round_trip(cli):
    _, acc = cli("createAccount", "username=async-user", "password=Pw-123456", "accounttype=0",
                 "email=a@example.com", "firstname=A", "lastname=User")
    acc_id = acc["account"]["id"]
    assert acc["account"]["state"] == "enabled"

    # without --async cs polls queryAsyncJobResult itself and prints the job result
    _, result = cli("disableAccount", f"id={acc_id}", "lock=false")
    assert result["account"]["id"] == acc_id and result["account"]["state"] == "disabled"

    # --async prints {"jobid": ...}; then the job is queried by hand
    _, started = cli("--async", "enableAccount", f"id={acc_id}")   # enableAccount is synchronous
    assert started["account"]["state"] == "enabled"
    _, started = cli("--async", "disableAccount", f"id={acc_id}", "lock=true")
    assert set(started) == {"jobid"}
    job = _poll_job(cli, started["jobid"])
    assert job["jobstatus"] == 1 and job["jobresultcode"] == 0 and job["jobresulttype"] == "object"
    assert job["cmd"] == "disableAccount" and job["jobinstancetype"] == "Account" and job["jobinstanceid"] == acc_id
    assert job["jobresult"]["account"]["state"] == "locked"

    _, deleted = cli("deleteAccount", f"id={acc_id}")
    assert deleted == {"success": True}
    _, gone = cli("listAccounts", "name=async-user")
    assert gone == {}


def test_async_job_failure_is_reported(cli):
    """A job that fails: cs exits 1 with the job's error (jobstatus 2)."""
    _, acc = cli("createAccount", "username=twice", "password=Pw-123456", "accounttype=0")
    acc_id = acc["account"]["id"]
    cli("deleteAccount", f"id={acc_id}")
    proc, body = cli("--async", "deleteAccount", f"id={acc_id}", ok=False)   # the id no longer exists
    assert body["deleteaccountresponse"]["errorcode"] == 431
    _, admin = cli("listAccounts", "name=admin")
    proc, body = cli("deleteAccount", f"id={admin['account'][0]['id']}", ok=False)
    assert "Job failure" in proc.stderr
    job = body["queryasyncjobresultresponse"]
    assert job["jobstatus"] == 2 and job["jobresultcode"] == 531
    assert job["jobresult"]["errorcode"] == 531 and "admin" in job["jobresult"]["errortext"]


# ---------------------------------------------------------------- the library: signing, expiry, paging

def test_library_signature_variants(server):
    api = client(server)
    api.createZone(name="lib-zone", networktype="Advanced")
    assert api.listZones(name="lib-zone")["count"] == 1
    # POST through the library
    assert client(server, method="post").listZones(name="lib-zone")["count"] == 1
    # negative expiration: no signatureVersion/expires at all (how cmk signs); still accepted
    assert client(server, expiration=-1).listZones(name="lib-zone")["count"] == 1
    # a wrong secret is refused with 401
    with pytest.raises(CloudStackApiException) as exc:
        client(server, secret="not-the-secret").listZones()
    assert exc.value.response.status_code == 401 and exc.value.error["errorcode"] == 401


def test_expired_signature_is_rejected(server):
    api = client(server)
    past = (datetime.now(timezone.utc) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    with pytest.raises(CloudStackApiException) as exc:
        api.listZones(signatureVersion="3", expires=past)      # cs signs what it is given
    assert exc.value.response.status_code == 401
    assert exc.value.error["errorcode"] == 401 and "expired" in exc.value.error["errortext"]

    # the same by hand with volstack's signing helper: valid in the future, refused in the past
    def call(expires):
        params = {"command": "listZones", "apiKey": server.admin.api_key, "response": "json",
                  "signatureVersion": "3", "expires": expires}
        params["signature"] = sign(params, server.admin_secret)
        return requests.get(server.endpoint, params=params, timeout=10)
    future = (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    ok = call(future)
    assert ok.status_code == 200 and ok.headers["Content-Type"].startswith("application/json")
    assert ok.json() == {"listzonesresponse": {}}
    expired = call(past)
    assert expired.status_code == 401
    assert expired.json()["listzonesresponse"]["errorcode"] == 401
    assert expired.headers.get("X-Description")


def test_library_fetch_list_pages(server):
    api = client(server)
    for i in range(5):
        api.createZone(name=f"page-zone-{i}", networktype="Advanced")
    zones = api.listZones(fetch_list=True, pagesize=2)
    assert sorted(z["name"] for z in zones) == [f"page-zone-{i}" for i in range(5)]
    page3 = api.listZones(page=3, pagesize=2)
    assert page3["count"] == 5 and len(page3["zone"]) == 1


# ---------------------------------------------------------------- session login

@pytest.fixture
def pw_server(tmp_path):
    ms = start_server(f"sqlite:///{tmp_path / 'pw.db'}", tmp_path, admin_password="pw")
    yield ms
    ms.stop()


def test_session_login(pw_server):
    ms = pw_server
    http = requests.Session()
    bad = http.post(ms.endpoint, data={"command": "login", "username": "admin", "password": "wrong",
                                       "domain": "/", "response": "json"}, timeout=10)
    assert bad.status_code != 200 and "sessionkey" not in http.cookies

    # a failed login delays the next attempt of that user (1 s): the right password works once it has passed
    from agentproc import wait_until
    res = wait_until("the failed login's delay to pass", lambda: (r := http.post(
        ms.endpoint, data={"command": "login", "username": "admin", "password": "pw", "domain": "/",
                           "response": "json"}, timeout=10)).status_code == 200 and r, timeout=10, interval=0.2)
    login = res.json()["loginresponse"]
    key = login["sessionkey"]
    assert login["username"] == "admin" and login["account"] == "admin" and int(login["timeout"]) > 0
    assert http.cookies.get("sessionkey") == key and "JSESSIONID" in http.cookies

    zones = http.get(ms.endpoint, params={"command": "listZones", "sessionkey": key, "response": "json"}, timeout=10)
    assert zones.status_code == 200 and zones.json() == {"listzonesresponse": {}}
    made = http.post(ms.endpoint, data={"command": "createZone", "name": "session-zone", "networktype": "Advanced",
                                        "sessionkey": key, "response": "json"}, timeout=10)
    assert made.status_code == 200 and made.json()["createzoneresponse"]["zone"]["name"] == "session-zone"
    zones = http.get(ms.endpoint, params={"command": "listZones", "sessionkey": key, "response": "json"}, timeout=10)
    assert zones.json()["listzonesresponse"]["count"] == 1

    # the session key alone (no cookie) is not enough, nor is the cookie without the key
    no_cookie = requests.get(ms.endpoint, params={"command": "listZones", "sessionkey": key, "response": "json"},
                             timeout=10)
    assert no_cookie.status_code == 401
    no_key = http.get(ms.endpoint, params={"command": "listZones", "response": "json"}, timeout=10)
    assert no_key.status_code == 401

    out = http.get(ms.endpoint, params={"command": "logout", "sessionkey": key, "response": "json"}, timeout=10)
    assert out.status_code == 200
    after = http.get(ms.endpoint, params={"command": "listZones", "sessionkey": key, "response": "json"}, timeout=10)
    assert after.status_code == 401


# ---------------------------------------------------------------- cloudstack.ini

def test_cloudstack_ini_in_cwd(server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "cloudstack.ini").write_text(
        "[cloudstack]\n"
        f"endpoint = {server.endpoint}\nkey = {server.admin.api_key}\nsecret = {server.admin_secret}\n"
        "timeout = 30\nmethod = post\npoll_interval = 0.05\n"
        "[other]\n"
        f"endpoint = {server.endpoint}\nkey = {server.admin.api_key}\nsecret = wrong\ntimeout = 30\n")
    env = client_env(tmp_path / "home")               # no CLOUDSTACK_* variables at all
    assert not any(k.startswith("CLOUDSTACK_") for k in env)
    client(server).createZone(name="ini-zone", networktype="Advanced")

    proc = run([CS_BIN, "-t", "listZones", "name=ini-zone"], env=env, cwd=work)
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout)["zone"][0]["name"] == "ini-zone"
    assert "POST " in proc.stderr                       # method = post from the ini

    # an async command through the ini: cs polls the job with the ini's settings
    acc = client(server).createAccount(username="ini-user", password="Pw-123456", accounttype=0)["account"]
    proc = run([CS_BIN, "deleteAccount", f"id={acc['id']}"], env=env, cwd=work)
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"success": True}, describe(proc)

    # another region of the same ini, with a wrong secret: 401
    proc = run([CS_BIN, "-r", "other", "listZones"], env=env, cwd=work)
    assert proc.returncode == 1 and "HTTP 401" in proc.stderr, describe(proc)


# ---------------------------------------------------------------- transfers (extract URLs, browser uploads)

import test_templates  # noqa: E402
from test_templates import add_store, qemu_bytes  # noqa: E402

cloud = test_templates.cloud            # the fixture: a zone with a real agent, a pool and a store


def test_cs_cli_gets_upload_params_and_extracts_the_volume(cli, cloud):
    from test_transfers import browser_post, monitor
    add_store(cloud)
    zone = cloud["zone"]["id"]
    _, out = cli("getUploadParamsForVolume", "name=cli-up", f"zoneid={zone}", "format=QCOW2")
    params = out["getuploadparams"]
    assert set(params) == {"id", "postURL", "metadata", "expires", "signature"}
    data = qemu_bytes(cloud["tmp"], "cli.qcow2", 1, fill=0x43)
    assert browser_post(params, data).status_code == 200
    monitor(cloud)
    _, vols = cli("listVolumes", f"id={params['id']}")
    assert vols["volume"][0]["state"] == "Uploaded"
    api = cloud["api"]
    vm = api.deployVirtualMachine(zoneid=zone, serviceofferingid=cloud["so"]["id"], rootdisksize=1)["virtualmachine"]
    api.attachVolume(id=params["id"], virtualmachineid=vm["id"])
    api.detachVolume(id=params["id"])
    _, ex = cli("extractVolume", f"id={params['id']}", "mode=HTTP_DOWNLOAD", f"zoneid={zone}")
    assert ex["volume"]["state"] == "DOWNLOAD_URL_CREATED" and ex["volume"]["id"] == params["id"]
    got = requests.get(ex["volume"]["url"], timeout=30)
    assert got.status_code == 200 and got.content[:4] == b"QFI\xfb"
