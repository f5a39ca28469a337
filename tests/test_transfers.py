"""Extract URLs and browser uploads over real HTTP: a real `volstack agent` (simulated guests, real qemu-img
images on a Filesystem image store) serves and takes the bytes; plain `requests` plays the browser."""
import hashlib
import sqlite3
import subprocess
import threading
import time
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, update

import test_templates
from agentproc import wait_until
from test_templates import add_store, error_of, img_info, qemu_bytes, qemu_io, store_files, templates_with_data

from volstack.db.image_models import ImageTransfer
from volstack.db.models import utcnow
from volstack.errors import ResourceUnavailable
from volstack.services import extracts, imagestores, post_uploads
from volstack.services.context import system_context

cloud = test_templates.cloud            # the fixture: a zone with a real agent, a pool and a store


def monitor(c):
    """One pass of the upload monitor (the periodic task every upload.monitoring.interval)."""
    return post_uploads.monitor(c["server"].db, system_context())


def all_files(path):
    return sorted(p.name for p in path.iterdir())


def user_api(c, name="alice"):
    from support import client
    api = c["api"]
    acc = api.createAccount(username=name, password="pw", accounttype=0, email="a@b.c", firstname="a",
                            lastname="b")["account"]
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    return client(c["server"], key=keys["apikey"], secret=keys["secretkey"])


def browser_post(params, data, filename="disk.qcow2", **headers):
    """What CloudStack's UI does: a multipart form with the file as field "file", and the signed headers."""
    h = {"X-signature": params["signature"], "X-metadata": params["metadata"], "X-expires": params["expires"], **headers}
    return requests.post(params["postURL"], headers=h, files={"file": (filename, data)}, timeout=60)


# ---------------------------------------------------------------- extract

def test_extract_template_is_a_signed_url_with_ranges_and_expiry(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    t = templates_with_data(cloud, [2])[0]
    on_store = (tmp / "store" / f"{t['id']}.qcow2").read_bytes()
    code, text = error_of(lambda: api.extractTemplate(id=t["id"], mode="FTP_UPLOAD", url="ftp://x/y"))
    assert code == 431 and "FTP_UPLOAD is not supported" in text
    ex = api.extractTemplate(id=t["id"], mode="HTTP_DOWNLOAD", zoneid=cloud["zone"]["id"])["template"]
    assert ex["id"] == t["id"] and ex["name"] == "t0" and ex["extractMode"] == "HTTP_DOWNLOAD"
    assert ex["state"] == "DOWNLOAD_URL_CREATED" and ex["zoneid"] == cloud["zone"]["id"] and ex["extractId"]
    assert ex["url"].startswith(cloud["agent"].url + "/transfer/download/")

    got = requests.get(ex["url"], timeout=30)
    assert got.status_code == 200 and got.content == on_store
    assert 't0.qcow2"' in got.headers["Content-Disposition"]
    head = requests.head(ex["url"], timeout=30)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(on_store) and not head.content
    part = requests.get(ex["url"], headers={"Range": "bytes=1000-"}, timeout=30)       # curl -C - resumes so
    assert part.status_code == 206 and part.content == on_store[1000:]
    assert part.headers["Content-Range"] == f"bytes 1000-{len(on_store) - 1}/{len(on_store)}"
    assert requests.get(ex["url"], headers={"Range": f"bytes={len(on_store)}-"}, timeout=30).status_code == 416

    # altered: signature, file name, expiry; every one is refused and serves nothing
    base, query = ex["url"].split("?")
    sig = query.split("signature=")[1]
    altered = [f"{base}?{query.replace(sig, ('0' if sig[0] != '0' else '1') + sig[1:])}",
               f"{base.rsplit('/', 1)[0]}/other.qcow2?{query}",
               f"{base}?{query.replace('expires=', 'expires=2099')}", base]
    for url in altered:
        r = requests.get(url, timeout=30)
        assert r.status_code == 403 and len(r.content) < 1000 and b"QFI" not in r.content, (url, r.text)
    # an expired URL
    api.updateConfiguration(name="extract.url.expiration.interval", value="0")
    old = api.extractTemplate(id=t["id"], mode="HTTP_DOWNLOAD")["template"]
    r = requests.get(old["url"], timeout=30)
    assert r.status_code == 403 and "expired" in r.json()["error"]


def test_extract_template_follows_the_extractable_and_owner_rules(cloud):
    api = cloud["api"]
    add_store(cloud)
    t = templates_with_data(cloud, [1])[0]
    api.updateTemplatePermissions(id=t["id"], ispublic=True)
    alice = user_api(cloud)
    code, text = error_of(lambda: alice.extractTemplate(id=t["id"], mode="HTTP_DOWNLOAD"))
    assert code == 531 and "not allowed to be extracted" in text
    api.updateTemplatePermissions(id=t["id"], isextractable=True)
    code, text = error_of(lambda: alice.extractTemplate(id=t["id"], mode="HTTP_DOWNLOAD"))
    assert code == 531                                  # extractable, but another account's template
    assert requests.get(api.extractTemplate(id=t["id"], mode="HTTP_DOWNLOAD")["template"]["url"], timeout=30).ok
    api.updateConfiguration(name="disable.extraction", value="true")
    code, text = error_of(lambda: alice.extractTemplate(id=t["id"], mode="HTTP_DOWNLOAD"))
    assert code == 531 and "disabled" in text


def test_extract_volume_copies_it_to_a_store_and_the_copy_goes_when_the_url_expires(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    store = add_store(cloud)
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  rootdisksize=1)["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    code, text = error_of(lambda: api.extractVolume(id=root["id"], mode="HTTP_DOWNLOAD", zoneid=cloud["zone"]["id"]))
    assert code == 531 and "stopped" in text                # the ROOT volume of a running VM
    offering = api.createDiskOffering(name="d1", disksize=1, displaytext="d1")["diskoffering"]
    vol = api.createVolume(name="data", zoneid=cloud["zone"]["id"], diskofferingid=offering["id"])["volume"]
    code, text = error_of(lambda: api.extractVolume(id=vol["id"], mode="HTTP_DOWNLOAD", zoneid=cloud["zone"]["id"]))
    assert code == 431 and "no storage pool" in text       # Allocated: nothing to extract yet
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    code, _ = error_of(lambda: api.extractVolume(id=vol["id"], mode="HTTP_DOWNLOAD", zoneid=cloud["zone"]["id"]))
    assert code == 531                                      # attached to a running VM
    api.detachVolume(id=vol["id"])
    src = tmp / "primary" / vol["path"]
    qemu_io(src, "write -P 0x6b 0 3M")

    ex = api.extractVolume(id=vol["id"], mode="HTTP_DOWNLOAD", zoneid=cloud["zone"]["id"])["volume"]
    assert ex["id"] == vol["id"] and ex["name"] == "data" and ex["state"] == "DOWNLOAD_URL_CREATED"
    copies = [n for n in store_files(tmp / "store") if n.startswith("extract-")]
    assert len(copies) == 1 and copies[0].endswith(".qcow2")
    objs = api.listImageStoreObjects(id=store["id"])["datastoreobject"]
    assert [(o["name"], o.get("volumeid")) for o in objs] == [(copies[0], vol["id"])]
    got = tmp / "got.qcow2"
    with requests.get(ex["url"], stream=True, timeout=30) as r:
        assert r.status_code == 200
        with open(got, "wb") as f:
            for chunk in r.iter_content(1 << 20):
                f.write(chunk)
    assert got.read_bytes() == (tmp / "store" / copies[0]).read_bytes()
    assert img_info(got)["format"] == "qcow2" and img_info(got)["virtual-size"] == 2 ** 30
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(src), str(got)], check=True,
                   capture_output=True)
    code, text = error_of(lambda: api.deleteImageStore(id=store["id"]))
    assert code == 431 and "volume" in text

    db = cloud["server"].db
    assert extracts.cleanup(db) == 0                        # not expired yet
    assert extracts.cleanup(db, now=utcnow() + timedelta(hours=5)) == 1
    assert [n for n in store_files(tmp / "store") if n.startswith("extract-")] == []
    assert requests.get(ex["url"], timeout=30).status_code in (403, 404)


def detached_volume(c, name="data"):
    api = c["api"]
    vm = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"],
                                  rootdisksize=1)["virtualmachine"]
    offering = api.createDiskOffering(name=f"{name}-o", disksize=1, displaytext=name)["diskoffering"]
    vol = api.createVolume(name=name, zoneid=c["zone"]["id"], diskofferingid=offering["id"])["volume"]
    api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    return api.detachVolume(id=vol["id"])["volume"]


def test_an_extract_copy_in_the_making_is_never_cleaned_and_its_url_lives_from_publication(cloud, monkeypatch):
    """The cleanup may run on another management server, by a clock far ahead: while the extractVolume job
    is alive its copy stays; a job taken for dead loses the race cleanly and leaves no file behind."""
    from support import client
    from volstack.db.models import AsyncJob
    api, tmp, db = cloud["api"], cloud["tmp"], cloud["server"].db
    add_store(cloud)
    api.updateConfiguration(name="extract.url.expiration.interval", value="120")
    vol = detached_volume(cloud)
    gate = {"when": "after", "reached": threading.Event(), "go": threading.Event()}
    real = extracts.run_long

    def gated(*args, **kw):             # the job's copy, held before or after the bytes are written
        if gate["when"] == "before":
            gate["reached"].set()
            assert gate["go"].wait(60)
        out = real(*args, **kw)
        if gate["when"] == "after":
            gate["reached"].set()
            assert gate["go"].wait(60)
        return out
    monkeypatch.setattr(extracts, "run_long", gated)
    outcome = {}

    def extract():
        try:
            outcome["ok"] = client(cloud["server"]).extractVolume(id=vol["id"], mode="HTTP_DOWNLOAD",
                                                                  zoneid=cloud["zone"]["id"])["volume"]
        except Exception as e:      # noqa: BLE001 (the test reads it)
            outcome["error"] = e

    def extract_copies():
        return [n for n in store_files(tmp / "store") if n.startswith("extract-")]

    worker = threading.Thread(target=extract)
    worker.start()
    assert gate["reached"].wait(60)
    [copy] = extract_copies()
    assert extracts.cleanup(db, now=utcnow() + timedelta(hours=5)) == 0       # the copy is being made: it stays
    assert extract_copies() == [copy]
    published_after = utcnow().replace(microsecond=0)
    gate["go"].set()
    worker.join(60)
    ex = outcome["ok"]
    with db.session(readonly=True) as s:
        tr = s.scalar(select(ImageTransfer).where(ImageTransfer.uuid == ex["extractId"]))
    assert tr.state == "Ready" and tr.removed is None
    assert tr.expires >= published_after + timedelta(seconds=120)              # counted from publication
    assert requests.head(ex["url"], timeout=30).status_code == 200
    assert extracts.cleanup(db, now=tr.expires - timedelta(seconds=1)) == 0
    assert extracts.cleanup(db, now=tr.expires) == 1
    assert extract_copies() == []

    # A job whose management server is taken for dead (reconciled as failed) while its copy is still to come:
    # the cleanup expires the row first, so the late copy is deleted by the job instead of being published.
    gate.update(when="before", reached=threading.Event(), go=threading.Event())
    outcome.clear()
    worker = threading.Thread(target=extract)
    worker.start()
    assert gate["reached"].wait(60)
    with db.session() as s:
        s.execute(update(AsyncJob).where(AsyncJob.cmd == "extractVolume", AsyncJob.status == 0)
                  .values(status=2, running=False, result={"errorcode": 530, "errortext": "interrupted"}))
    assert extracts.cleanup(db) == 1
    gate["go"].set()
    worker.join(60)
    assert "error" in outcome                           # the job had been reported failed
    wait_until("the job to delete its unpublished copy", lambda: extract_copies() == [])
    with db.session(readonly=True) as s:
        rows = s.scalars(select(ImageTransfer).where(ImageTransfer.kind == "extract")).all()
        assert [(r.state, r.removed is not None) for r in rows] == [("Expired", True)] * 2


# ---------------------------------------------------------------- browser uploads

def test_browser_upload_of_a_qcow2_becomes_an_uploaded_volume_that_moves_to_primary_on_attach(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    data = qemu_bytes(tmp, "up.qcow2", 2, fill=0x3c)
    params = api.getUploadParamsForVolume(name="up", zoneid=cloud["zone"]["id"], format="QCOW2",
                                          checksum=hashlib.md5(data).hexdigest())["getuploadparams"]
    assert set(params) == {"id", "postURL", "metadata", "expires", "signature"}
    assert params["postURL"] == f"{cloud['agent'].url}/transfer/upload/{params['id']}"
    vol = api.listVolumes(id=params["id"])["volume"][0]
    assert vol["state"] == "NotUploaded"
    assert monitor(cloud) == 0                              # nothing sent yet, not expired

    pre = requests.options(params["postURL"], timeout=30)   # the browser's CORS preflight
    assert pre.status_code == 204 and "X-signature" in pre.headers["Access-Control-Allow-Headers"]
    r = browser_post(params, data)
    assert r.status_code == 200, r.text
    assert monitor(cloud) == 1
    vol = api.listVolumes(id=params["id"])["volume"][0]
    assert vol["state"] == "Uploaded" and vol["size"] == 2 ** 30
    assert cloud["agent"].client.call("upload_status", id=params["id"])["collected"]     # the agent may prune it
    assert all_files(tmp / "store") == [f"volume-{vol['id']}.qcow2"]
    assert (tmp / "store" / f"volume-{vol['id']}.qcow2").read_bytes() == data
    # another management server that asked the agent before this one settled the upload, and settles after it,
    # changes nothing (it used to take the Uploaded volume for deleted and remove its file)
    with cloud["server"].db.session() as s:
        tr = s.scalar(select(ImageTransfer).where(ImageTransfer.object_uuid == vol["id"]))
        late = {"state": "done", "result": {"size": 2 ** 30, "physical_size": len(data)}}
        assert post_uploads.settle(s, system_context(), tr, late, time.time()) is False
    assert all_files(tmp / "store") == [f"volume-{vol['id']}.qcow2"]
    again = browser_post(params, data)                      # one object takes one upload
    assert again.status_code == 409

    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  rootdisksize=1)["virtualmachine"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert vol["state"] == "Ready" and vol["storageid"] == cloud["pool"]["id"]
    subprocess.run(["qemu-img", "compare", str(tmp / "up.qcow2"), str(tmp / "primary" / vol["path"])], check=True,
                   capture_output=True)
    assert all_files(tmp / "store") == []


@pytest.mark.parametrize("problem", ["raw-as-qcow2", "checksum", "too-large", "backing-file"])
def test_a_bad_browser_upload_ends_in_upload_error_with_the_reason_and_no_file(cloud, problem):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    data = qemu_bytes(tmp, "up.qcow2", 1)
    if problem == "raw-as-qcow2":
        data = b"\0" * (1 << 20)
    if problem == "backing-file":
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(tmp / "up.qcow2"),
                        str(tmp / "child.qcow2")], check=True)
        data = (tmp / "child.qcow2").read_bytes()
    if problem == "too-large":
        api.updateConfiguration(name="storage.max.volume.upload.size", value="0")
    args = dict(name="bad", zoneid=cloud["zone"]["id"], format="QCOW2")
    if problem == "checksum":
        args["checksum"] = "{SHA-256}" + "0" * 64
    params = api.getUploadParamsForVolume(**args)["getuploadparams"]
    r = browser_post(params, data)
    assert r.status_code == (413 if problem == "too-large" else 400), r.text
    needle = {"raw-as-qcow2": "raw data", "checksum": "checksum mismatch", "too-large": "storage.max.volume.upload.size",
              "backing-file": "backing file"}[problem]
    assert needle in r.json()["error"]
    monitor(cloud)
    vol = api.listVolumes(id=params["id"])["volume"][0]
    assert vol["state"] == "UploadError" and needle in vol["status"]
    assert all_files(tmp / "store") == []                   # not even a hidden partial file
    api.deleteVolume(id=vol["id"])


def test_upload_params_refuse_tampering_and_expire_into_upload_abandoned(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    data = qemu_bytes(tmp, "up.qcow2", 1)
    params = api.getUploadParamsForVolume(name="v", zoneid=cloud["zone"]["id"], format="QCOW2")["getuploadparams"]
    other = api.getUploadParamsForVolume(name="w", zoneid=cloud["zone"]["id"], format="QCOW2")["getuploadparams"]
    for bad in (dict(params, signature="0" * 64), dict(params, expires="2099-01-01T00:00:00Z"),
                dict(params, metadata=other["metadata"]), dict(params, postURL=other["postURL"])):
        r = browser_post(bad, data)
        assert r.status_code == 403, r.text
    assert all_files(tmp / "store") == []
    api.updateConfiguration(name="upload.operation.timeout", value="0")
    late = api.getUploadParamsForVolume(name="late", zoneid=cloud["zone"]["id"], format="QCOW2")["getuploadparams"]
    r = browser_post(late, data)
    assert r.status_code == 403 and "expired" in r.json()["error"]
    monitor(cloud)
    vol = api.listVolumes(id=late["id"])["volume"][0]
    assert vol["state"] == "UploadAbandoned" and "expired" in vol["status"]
    assert api.listVolumes(id=params["id"])["volume"][0]["state"] == "NotUploaded"    # still within its time
    api.deleteVolume(id=vol["id"])


def test_browser_upload_of_a_template_and_an_iso_makes_them_ready_on_the_store(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    data = qemu_bytes(tmp, "t.qcow2", 1, fill=0x51)
    params = api.getUploadParamsForTemplate(name="up-t", displaytext="up-t", format="QCOW2", hypervisor="KVM",
                                            zoneid=cloud["zone"]["id"],
                                            checksum="{SHA-256}" + hashlib.sha256(data).hexdigest())["getuploadparams"]
    t = api.listTemplates(templatefilter="self", id=params["id"])["template"][0]
    assert t["isready"] is False and t["status"] == "Not Uploaded"
    assert browser_post(params, data).status_code == 200
    monitor(cloud)
    t = api.listTemplates(templatefilter="self", id=params["id"])["template"][0]
    assert t["isready"] is True and t["status"] == "Download Complete" and t["size"] == 2 ** 30
    assert (tmp / "store" / f"{t['id']}.qcow2").read_bytes() == data
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  templateid=t["id"])["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    qemu_io(tmp / "primary" / root["path"], "read -P 0x51 0 1M")

    iso = tmp / "x.iso"
    iso_data = bytearray(64 * 1024)
    iso_data[0x8001:0x8006] = b"CD001"
    iso.write_bytes(bytes(iso_data))
    params = api.getUploadParamsForIso(name="up-iso", displaytext="up-iso", zoneid=cloud["zone"]["id"])["getuploadparams"]
    r = requests.post(params["postURL"], data=bytes(iso_data), timeout=30, headers={   # a raw body works too
        "X-signature": params["signature"], "X-metadata": params["metadata"], "X-expires": params["expires"],
        "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    monitor(cloud)
    listed = api.listIsos(isofilter="self", id=params["id"])["iso"][0]
    assert listed["isready"] is True and listed["status"] == "Successfully Installed"
    ex = api.extractIso(id=params["id"], mode="HTTP_DOWNLOAD")["iso"]
    assert requests.get(ex["url"], timeout=30).content == bytes(iso_data)


def test_an_upload_in_progress_shows_then_a_stalled_one_ends_in_upload_error(cloud):
    """What the monitor does with the agent's in-progress reports (settle() is the monitor's second half)."""
    api = cloud["api"]
    add_store(cloud)
    params = api.getUploadParamsForVolume(name="slow", zoneid=cloud["zone"]["id"], format="RAW")["getuploadparams"]
    db, now = cloud["server"].db, time.time()
    for st, want in (({"state": "in_progress", "received": 5, "total": 10, "updated": now}, "UploadInProgress"),
                     ({"state": "in_progress", "received": 5, "total": 10, "updated": now - 601}, "UploadError")):
        with db.session() as s:
            tr = s.scalar(select(ImageTransfer).where(ImageTransfer.object_uuid == params["id"]))
            post_uploads.settle(s, system_context(), tr, st, now)
        assert api.listVolumes(id=params["id"])["volume"][0]["state"] == want
    assert "stalled" in api.listVolumes(id=params["id"])["volume"][0]["status"]


def test_a_file_uploaded_for_a_template_deleted_meanwhile_is_removed_outside_any_transaction(cloud, monkeypatch):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    params = api.getUploadParamsForTemplate(name="gone", displaytext="gone", format="QCOW2", hypervisor="KVM",
                                            zoneid=cloud["zone"]["id"])["getuploadparams"]
    api.deleteTemplate(id=params["id"])
    assert browser_post(params, qemu_bytes(tmp, "g.qcow2", 1)).status_code == 200   # the agent cannot know
    assert all_files(tmp / "store") == [f"{params['id']}.qcow2"]

    api.updateConfiguration(name="upload.monitoring.interval", value="86400")   # only this test's passes
    # Each removal checks that another writer could commit meanwhile (on SQLite a write session held across
    # the agent call would block every writer); the first one fails as if the agent were unreachable.
    calls, real = [], imagestores.channel

    class Watched:
        def __init__(self, host):
            self.inner = real(host)

        def call(self, cmd, **args):
            if cmd == "volume_delete":
                con = sqlite3.connect(cloud["server"].db.engine.url.database, timeout=0.5, isolation_level=None)
                try:
                    con.execute("BEGIN IMMEDIATE")
                    con.execute("ROLLBACK")
                    calls.append("writable")
                except sqlite3.OperationalError as e:
                    calls.append(str(e))
                finally:
                    con.close()
                if len(calls) == 1:
                    raise ResourceUnavailable("cannot reach the agent (the test says so)")
            return self.inner.call(cmd, **args)
    monkeypatch.setattr(imagestores, "channel", Watched)
    monitor(cloud)
    assert calls == ["writable"] and all_files(tmp / "store") == [f"{params['id']}.qcow2"]   # kept for a retry
    monitor(cloud)
    assert calls == ["writable", "writable"] and all_files(tmp / "store") == []
    with cloud["server"].db.session(readonly=True) as s:
        tr = s.scalar(select(ImageTransfer).where(ImageTransfer.object_uuid == params["id"]))
        assert tr.state == "Orphaned" and tr.removed is not None
    monitor(cloud)
    assert len(calls) == 2                                  # settled: never asked again
