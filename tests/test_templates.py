"""Image stores and templates through the API, with a real `volstack agent` (simulated guests, real
qemu-img images) and a real local HTTP server for the template sources."""
import hashlib
import subprocess
import time

import pytest
from cs import CloudStackApiException

from agentproc import AgentProcess
from support import add_datacenter, client


@pytest.fixture
def cloud(server, tmp_path):
    agent = AgentProcess(tmp_path / "agent", hypervisor="simulator", name="kvm1").start()
    api = client(server)
    dc = add_datacenter(api, "tz", "tp", "tc", [agent])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    host = dc["host"]
    (tmp_path / "store").mkdir()
    (tmp_path / "primary").mkdir()
    pool = api.createStoragePool(name="primary", url=f"SharedMountPoint://localhost{tmp_path / 'primary'}",
                                 zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"])["storagepool"]
    so = api.createServiceOffering(name="small", cpunumber=1, cpuspeed=500, memory=128,
                                   displaytext="small")["serviceoffering"]
    yield dict(api=api, zone=zone, host=host, pool=pool, so=so, tmp=tmp_path, agent=agent, server=server)
    agent.stop()


def error_of(call):
    with pytest.raises(CloudStackApiException) as e:
        call()
    return e.value.error["errorcode"], e.value.error["errortext"]


def add_store(c, name="store"):
    return c["api"].addImageStore(name=name, provider="Filesystem", url=f"file://{c['tmp'] / 'store'}",
                                  zoneid=c["zone"]["id"])["imagestore"]


def test_image_store_add_list_readonly_delete(cloud):
    api = cloud["api"]
    code, text = error_of(lambda: api.addImageStore(name="x", provider="S3", url="s3://b", zoneid=cloud["zone"]["id"]))
    assert code == 431 and "provider" in text
    code, text = error_of(lambda: api.addImageStore(name="x", provider="Filesystem",
                                                    url=f"file://{cloud['tmp'] / 'missing'}", zoneid=cloud["zone"]["id"]))
    assert code == 431 and "missing" in text
    assert api.listImageStores() == {}
    store = add_store(cloud)
    assert store["providername"] == "Filesystem" and store["protocol"] == "file" and store["readonly"] is False
    assert store["disksizetotal"] > 0
    code, text = error_of(lambda: add_store(cloud, "again"))
    assert code == 431 and "already exists" in text
    ro = api.updateImageStore(id=store["id"], readonly=True)["imagestore"]
    assert ro["readonly"] is True
    assert api.listImageStores(readonly=True)["imagestore"][0]["id"] == store["id"]
    code, text = error_of(lambda: api.registerTemplate(name="t", url="http://127.0.0.1:1/t.qcow2", format="QCOW2",
                                                       hypervisor="KVM", zoneid=cloud["zone"]["id"]))
    assert code == 534 and "No writable image store" in text
    assert api.listTemplates(templatefilter="all") == {}
    api.deleteImageStore(id=store["id"])
    assert api.listImageStores() == {}


@pytest.mark.parametrize("url,checksum,fmt,needle", [
    ("file:///etc/passwd", None, "QCOW2", "http"),
    ("http://169.254.169.254/latest/meta-data", None, "QCOW2", "link-local"),
    ("http://127.0.0.1/t.qcow2", "{SHA-256}abc", "QCOW2", "64 hex digits"),
    ("http://127.0.0.1/t.qcow2", "{CRC32}abcd", "QCOW2", "unknown algorithm"),
    ("http://127.0.0.1/t.qcow2", None, "VHD", "QCOW2 or RAW"),
])
def test_register_template_bad_input_is_refused_and_records_nothing(cloud, url, checksum, fmt, needle):
    api = cloud["api"]
    add_store(cloud)
    args = dict(name="bad", url=url, format=fmt, hypervisor="KVM", zoneid=cloud["zone"]["id"])
    if checksum:
        args["checksum"] = checksum
    code, text = error_of(lambda: api.registerTemplate(**args))
    assert code == 431 and needle in text
    assert api.listTemplates(templatefilter="all") == {}


def qemu_io(path, cmd, fmt="qcow2"):
    r = subprocess.run(["qemu-io", "-f", fmt, "-c", cmd, str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout + r.stderr
    return r.stdout


def img_info(path):
    import json
    return json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                                     capture_output=True, text=True).stdout)


def template_from_a_volume(c):
    """A VM whose ROOT volume holds a known pattern, stopped, and a template made from that volume."""
    api = c["api"]
    vm = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"], rootdisksize=2)["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    api.stopVirtualMachine(id=vm["id"])
    qemu_io(c["tmp"] / "primary" / root["path"], "write -P 0x5a 1M 2M")
    t = api.createTemplate(name="golden", displaytext="golden", volumeid=root["id"],
                           ostypeid=api.listOsTypes(description="Debian GNU/Linux 12")["ostype"][0]["id"])["template"]
    return vm, root, t


def test_create_template_from_volume_then_deploy_clones_of_one_cached_copy(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    store = add_store(cloud)
    _, root, t = template_from_a_volume(cloud)
    assert t["isready"] is True and t["status"] == "Download Complete" and t["format"] == "QCOW2"
    assert t["ostypename"] == "Debian GNU/Linux 12 (64-bit)" and t["size"] == 2 * 2 ** 30
    on_store = tmp / "store" / f"{t['id']}.qcow2"
    assert img_info(on_store)["format"] == "qcow2" and "backing-filename" not in img_info(on_store)
    objs = api.listImageStoreObjects(id=store["id"])["datastoreobject"]
    assert [(o["name"], o.get("templateid")) for o in objs] == [(on_store.name, t["id"])]

    # three deploys at once from the template onto one pool: one cached copy, three linked clones
    jobs = [client_async(cloud).deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                                     templateid=t["id"])["jobid"] for _ in range(3)]
    results = [wait(cloud, j) for j in jobs]
    cached = sorted(p.name for p in (tmp / "primary").iterdir() if p.name.startswith("tmpl-"))
    assert cached == [f"tmpl-{t['id']}"]
    for r in results:
        vol = api.listVolumes(virtualmachineid=r["virtualmachine"]["id"], type="ROOT")["volume"][0]
        info = img_info(tmp / "primary" / vol["path"])
        assert info["backing-filename"] == cached[0] and vol["size"] == 2 * 2 ** 30
        qemu_io(tmp / "primary" / vol["path"], "read -P 0x5a 1M 2M")
    listed = api.listTemplates(templatefilter="self", id=t["id"])["template"][0]
    assert {d["datastoreRole"] for d in listed["downloaddetails"]} == {"Image", "Primary"}

    # a ROOT disk smaller than the template is refused; a larger one grows the clone
    code, text = error_of(lambda: api.deployVirtualMachine(zoneid=cloud["zone"]["id"], templateid=t["id"],
                                                           serviceofferingid=cloud["so"]["id"], rootdisksize=1))
    assert code == 431 and "smaller than template golden" in text
    big = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"], templateid=t["id"],
                                   rootdisksize=3)["virtualmachine"]
    vol = api.listVolumes(virtualmachineid=big["id"], type="ROOT")["volume"][0]
    assert vol["size"] == 3 * 2 ** 30 and img_info(tmp / "primary" / vol["path"])["virtual-size"] == 3 * 2 ** 30

    # deleting the template: refused while VMs use it, forced removes the store copy; the cached copy stays
    # while clones need it and goes with the storage cleanup once they are expunged
    code, text = error_of(lambda: api.deleteTemplate(id=t["id"]))
    assert code == 431 and "used by 4 virtual machine" in text and "forced=true" in text     # as CloudStack
    api.deleteTemplate(id=t["id"], forced=True)
    assert not on_store.exists()
    from volstack.services import template_cache
    from volstack.services.context import system_context
    assert template_cache.cleanup(cloud["server"].db, system_context()) == 0
    assert (tmp / "primary" / cached[0]).exists()
    for r in results + [{"virtualmachine": big}]:
        api.destroyVirtualMachine(id=r["virtualmachine"]["id"], expunge=True)
    assert template_cache.cleanup(cloud["server"].db, system_context()) == 1
    assert not (tmp / "primary" / cached[0]).exists()


def client_async(c):
    return client(c["server"], fetch_result=False)


def wait(c, jobid):
    from helpers import wait_job
    job = wait_job(c["server"], jobid)
    assert job["jobstatus"] == 1, job
    return job["jobresult"]


def templates_with_data(c, mib_list):
    """Templates made from data volumes holding mib MiB each (so their store copies differ in size)."""
    api = c["api"]
    offering = api.createDiskOffering(name="d1", disksize=1, displaytext="d1")["diskoffering"]
    vm = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"], rootdisksize=1)["virtualmachine"]
    out = []
    for i, mib in enumerate(mib_list):
        vol = api.createVolume(name=f"v{i}", zoneid=c["zone"]["id"], diskofferingid=offering["id"])["volume"]
        vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
        api.detachVolume(id=vol["id"])
        qemu_io(c["tmp"] / "primary" / vol["path"], f"write -P 0x{0x41 + i:x} 0 {mib}M")
        out.append(api.createTemplate(name=f"t{i}", volumeid=vol["id"])["template"])
    return out


def store_files(path):
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))


def test_migrate_secondary_storage_complete_and_balance(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    a = add_store(cloud, "a")
    (tmp / "store2").mkdir()
    b = api.addImageStore(name="b", provider="Filesystem", url=f"file://{tmp / 'store2'}",
                          zoneid=cloud["zone"]["id"])["imagestore"]
    api.updateImageStore(id=b["id"], readonly=True)
    ts = templates_with_data(cloud, [3, 2, 1])         # all land on a: b is cordoned
    assert len(store_files(tmp / "store")) == 3 and store_files(tmp / "store2") == []
    digests = {name: hashlib.sha256((tmp / "store" / name).read_bytes()).hexdigest()
               for name in store_files(tmp / "store")}
    code, text = error_of(lambda: api.migrateSecondaryStorageData(srcpool=a["id"], destpools=b["id"]))
    assert code == 431 and "read-only" in text
    for st in (a, b):
        api.updateImageStore(id=st["id"], readonly=False, capacitybytes=64 * 2 ** 20)

    api.updateConfiguration(name="image.store.imbalance.threshold", value="0.001")
    res = api.migrateSecondaryStorageData(srcpool=a["id"], destpools=b["id"], migrationtype="Balance")["imagestore"]
    assert res["success"] is True and res["migrationtype"] == "Balance"
    assert store_files(tmp / "store2") == [f"{ts[0]['id']}.qcow2"]      # the 3 MiB one evens 3+2+1 out
    assert len(store_files(tmp / "store")) == 2

    res = api.migrateSecondaryStorageData(srcpool=a["id"], destpools=b["id"], migrationtype="Complete")["imagestore"]
    assert res["success"] is True and store_files(tmp / "store") == []
    assert {name: hashlib.sha256((tmp / "store2" / name).read_bytes()).hexdigest()
            for name in store_files(tmp / "store2")} == digests      # copies are byte for byte
    for t in ts:
        listed = api.listTemplates(templatefilter="self", id=t["id"])["template"][0]
        assert listed["isready"] is True
        assert [d["datastoreId"] for d in listed["downloaddetails"] if d["datastoreRole"] == "Image"] == [b["id"]]
    # the templates still deploy from their new store, and the emptied store can go
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  templateid=ts[2]["id"])["virtualmachine"]
    assert vm["state"] == "Running"
    api.deleteImageStore(id=a["id"])
    code, text = error_of(lambda: api.deleteImageStore(id=b["id"]))
    assert code == 431 and "3 template" in text          # CloudStack: InvalidParameterValueException
    (tmp / "store3").mkdir()
    c = api.addImageStore(name="c", provider="Filesystem", url=f"file://{tmp / 'store3'}",
                          zoneid=cloud["zone"]["id"])["imagestore"]
    code, text = error_of(lambda: api.migrateResourceToAnotherSecondaryStorage(srcpool=c["id"], destpool=b["id"],
                                                                               templates=ts[0]["id"]))
    assert code == 431 and ts[0]["id"] in text
    res = api.migrateResourceToAnotherSecondaryStorage(srcpool=b["id"], destpool=c["id"],
                                                       templates=ts[0]["id"])["imagestore"]
    assert res["success"] is True
    assert store_files(tmp / "store3") == [f"{ts[0]['id']}.qcow2"] and len(store_files(tmp / "store2")) == 2


def test_copy_template_to_another_zone_then_deploy_there(cloud):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    t = templates_with_data(cloud, [1])[0]
    agent2 = AgentProcess(tmp / "agent2", hypervisor="simulator", name="kvm2").start()
    try:
        zone2 = api.createZone(name="tz2", networktype="Advanced")["zone"]
        pod2 = api.createPod(name="tp2", zoneid=zone2["id"])["pod"]
        cl2 = api.addCluster(clustername="tc2", zoneid=zone2["id"], podid=pod2["id"], hypervisor="KVM",
                             clustertype="CloudManaged")["cluster"][0]
        api.addHost(zoneid=zone2["id"], podid=pod2["id"], clusterid=cl2["id"], hypervisor="KVM", url=agent2.url,
                    username="root", password=agent2.token)
        for d in ("store-z2", "primary-z2"):
            (tmp / d).mkdir()
        api.createStoragePool(name="p2", url=f"SharedMountPoint://localhost{tmp / 'primary-z2'}", zoneid=zone2["id"],
                              podid=pod2["id"], clusterid=cl2["id"])
        code, text = error_of(lambda: api.copyTemplate(id=t["id"], destzoneid=zone2["id"]))
        assert code == 534 and "No writable image store" in text
        api.addSecondaryStorage(url=f"file://{tmp / 'store-z2'}", zoneid=zone2["id"])
        code, text = error_of(lambda: api.deployVirtualMachine(zoneid=zone2["id"], serviceofferingid=cloud["so"]["id"],
                                                               templateid=t["id"]))
        assert code == 431 and "not ready in zone tz2" in text
        copied = api.copyTemplate(id=t["id"], destzoneid=zone2["id"])["template"]
        assert copied["id"] == t["id"]
        assert store_files(tmp / "store-z2") == [f"{t['id']}.qcow2"]
        assert api.listTemplates(templatefilter="self", zoneid=zone2["id"])["template"][0]["isready"] is True
        vm = api.deployVirtualMachine(zoneid=zone2["id"], serviceofferingid=cloud["so"]["id"],
                                      templateid=t["id"])["virtualmachine"]
        root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
        qemu_io(tmp / "primary-z2" / root["path"], "read -P 0x41 0 1M")
    finally:
        agent2.stop()


# ---------------------------------------------------------------- downloads from a real HTTP server

@pytest.fixture
def web():
    from httpserver import FileServer
    srv = FileServer().start()
    yield srv
    srv.stop()


def qemu_bytes(tmp, name, mib_written, fill=0x61):
    path = tmp / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    qemu_io(path, f"write -P 0x{fill:x} 0 {mib_written}M")
    return path.read_bytes()


def wait_template(api, tid, timeout=60):
    """Poll listTemplates as a user does until the download settles (ready, or an error status)."""
    deadline = time.monotonic() + timeout
    while True:
        t = api.listTemplates(templatefilter="all", id=tid)["template"][0]
        if t["isready"] or not (t["status"].endswith("Downloaded") or t["status"] in ("Processing", "Installing Template")):
            return t
        assert time.monotonic() < deadline, t
        time.sleep(0.1)


def allow_loopback(api):
    api.updateConfiguration(name="secstorage.allowed.internal.sites", value="127.0.0.1/32")


def test_register_compressed_template_with_checksum_downloads_to_the_store_then_deploys(cloud, web):
    import bz2
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    raw = bz2.compress(qemu_bytes(tmp, "src.qcow2", 2))
    url = web.add("/images/tiny.qcow2.bz2", data=raw)
    digest = "{SHA-256}" + __import__("hashlib").sha256(raw).hexdigest()
    # loopback is not a download source until the operator allows it
    t = api.registerTemplate(name="tiny", url=url, format="QCOW2", hypervisor="KVM", zoneid=cloud["zone"]["id"],
                             checksum=digest, ispublic=True)["template"][0]
    t = wait_template(api, t["id"])
    assert t["isready"] is False and "127.0.0.1" in t["status"]
    api.deleteTemplate(id=t["id"])
    allow_loopback(api)
    t = api.registerTemplate(name="tiny", url=url, format="QCOW2", hypervisor="KVM", zoneid=cloud["zone"]["id"],
                             checksum=digest, ispublic=True)["template"][0]
    assert t["isready"] is False
    t = wait_template(api, t["id"])
    assert t["isready"] is True and t["status"] == "Download Complete", t
    assert t["size"] == 2 ** 30 and t["checksum"] == digest.split("}")[1]
    assert store_files(tmp / "store") == [f"{t['id']}.qcow2"]
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  templateid=t["id"])["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    qemu_io(tmp / "primary" / root["path"], "read -P 0x61 0 2M")


@pytest.mark.parametrize("problem", ["checksum", "404", "raw-as-qcow2"])
def test_failed_downloads_end_in_an_error_status_and_leave_no_file(cloud, web, problem):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    allow_loopback(api)
    data = qemu_bytes(tmp, "src.qcow2", 1) if problem != "raw-as-qcow2" else b"\0" * (1 << 20)
    url = web.add("/t.qcow2", data=data, fail="404" if problem == "404" else None)
    checksum = "{MD5}" + "0" * 32 if problem == "checksum" else None
    args = dict(name="bad", url=url, format="QCOW2", hypervisor="KVM", zoneid=cloud["zone"]["id"])
    if checksum:
        args["checksum"] = checksum
    t = wait_template(api, api.registerTemplate(**args)["template"][0]["id"])
    assert t["isready"] is False
    needle = {"checksum": "0" * 32, "404": "404", "raw-as-qcow2": "QCOW2"}[problem]
    assert needle in t["status"], t["status"]
    assert store_files(tmp / "store") == [] and not [p for p in (tmp / "store").iterdir()]
    code, text = error_of(lambda: api.deployVirtualMachine(zoneid=cloud["zone"]["id"], templateid=t["id"],
                                                           serviceofferingid=cloud["so"]["id"]))
    assert code == 431 and "not ready" in text


def test_direct_download_template_goes_straight_to_the_pool_once_and_refreshes_when_the_source_changes(cloud, web):
    api, tmp = cloud["api"], cloud["tmp"]
    allow_loopback(api)
    url = web.add("/dd.qcow2", data=qemu_bytes(tmp, "dd.qcow2", 1, fill=0x71))
    t = api.registerTemplate(name="dd", url=url, format="QCOW2", hypervisor="KVM", zoneid=cloud["zone"]["id"],
                             directdownload=True)["template"][0]
    assert t["isready"] is True and t["status"] == "Bypassed Secondary Storage" and t["directdownload"] is True
    vms_ = [api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                     templateid=t["id"])["virtualmachine"] for _ in range(2)]
    gets = [r for r in web.requests if r[0] == "GET" and r[1] == "/dd.qcow2"]
    assert len(gets) >= 1 and all(r[3] in (200, 206) for r in gets)
    first = len(gets)
    cached = [p.name for p in (tmp / "primary").iterdir() if p.name.startswith("tmpl-")]
    assert cached == [f"tmpl-{t['id']}"]
    for vm in vms_:
        root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
        qemu_io(tmp / "primary" / root["path"], "read -P 0x71 0 1M")
    # the source changes: the next deploy sees it (HEAD), fetches the new bits and clones those
    web.add("/dd.qcow2", data=qemu_bytes(tmp, "dd2.qcow2", 1, fill=0x72))
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  templateid=t["id"])["virtualmachine"]
    assert len([r for r in web.requests if r[0] == "GET" and r[1] == "/dd.qcow2"]) > first
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    qemu_io(tmp / "primary" / root["path"], "read -P 0x72 0 1M")
    for old in vms_:       # clones of the old bits keep working
        root = api.listVolumes(virtualmachineid=old["id"])["volume"][0]
        qemu_io(tmp / "primary" / root["path"], "read -P 0x71 0 1M")


def test_upload_volume_lands_on_the_store_then_moves_to_primary_on_attach(cloud, web):
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    allow_loopback(api)
    data = qemu_bytes(tmp, "up.qcow2", 1, fill=0x33)
    url = web.add("/up.qcow2", data=data)
    digest = __import__("hashlib").md5(data).hexdigest()
    vol = api.uploadVolume(name="up", url=url, format="QCOW2", zoneid=cloud["zone"]["id"], checksum=digest)["volume"]
    assert vol["state"] == "Uploaded" and vol["size"] == 2 ** 30
    assert store_files(tmp / "store") == [f"volume-{vol['id']}.qcow2"]
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  rootdisksize=1)["virtualmachine"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert vol["state"] == "Ready" and vol["storageid"] == cloud["pool"]["id"]
    qemu_io(tmp / "primary" / vol["path"], "read -P 0x33 0 1M")
    assert store_files(tmp / "store") == []
    code, text = error_of(lambda: api.uploadVolume(name="bad", url="file:///etc/passwd", format="QCOW2",
                                                   zoneid=cloud["zone"]["id"]))
    assert code == 431


def test_direct_download_registration_checks_the_source_and_records_nothing_when_it_fails(cloud, web):
    api = cloud["api"]
    allow_loopback(api)
    url = web.add("/missing.qcow2", data=b"x", fail="404")
    code, text = error_of(lambda: api.registerTemplate(name="dd", url=url, format="QCOW2", hypervisor="KVM",
                                                       zoneid=cloud["zone"]["id"], directdownload=True))
    assert code == 431 and "404" in text and url in text
    assert api.listTemplates(templatefilter="all") == {}


def test_direct_download_certificates_let_hosts_trust_an_https_source(cloud, tmp_path):
    from httpserver import FileServer
    api, tmp = cloud["api"], cloud["tmp"]
    allow_loopback(api)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with FileServer(tls=(str(cert), str(key))) as web:
        url = web.add("/s.qcow2", data=qemu_bytes(tmp, "s.qcow2", 1, fill=0x53))
        register = dict(name="https", url=url, format="QCOW2", hypervisor="KVM", zoneid=cloud["zone"]["id"],
                        directdownload=True)
        code, text = error_of(lambda: api.registerTemplate(**register))
        assert code == 431 and "certificate" in text.lower()
        body = "".join(l for l in cert.read_text().splitlines() if "CERTIFICATE" not in l)   # header-less, as allowed
        up = api.uploadTemplateDirectDownloadCertificate(name="lab-ca", certificate=body, hypervisor="KVM",
                                                         zoneid=cloud["zone"]["id"])["uploadtemplatedirectdownloadcertificate"]
        assert up["alias"] == "lab-ca" and "CN=127.0.0.1" in up["subject"]
        assert [h["status"] for h in up["hostsmap"]] == ["installed"]
        listed = api.listTemplateDirectDownloadCertificates(zoneid=cloud["zone"]["id"])["directdownloadcertificate"]
        assert [c["id"] for c in listed] == [up["id"]] and "hostsmap" not in listed[0]
        t = api.registerTemplate(**register)["template"][0]
        vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                      templateid=t["id"])["virtualmachine"]
        root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
        qemu_io(tmp / "primary" / root["path"], "read -P 0x53 0 1M")
        revoked = api.revokeTemplateDirectDownloadCertificate(zoneid=cloud["zone"]["id"], name="lab-ca")
        assert [h["status"] for h in revoked["hostsmap"]] == ["SUCCESS"]
        code, text = error_of(lambda: api.registerTemplate(**dict(register, name="again")))
        assert code == 431
    code, text = error_of(lambda: api.uploadTemplateDirectDownloadCertificate(
        name="junk", certificate="not a certificate", hypervisor="KVM", zoneid=cloud["zone"]["id"]))
    assert code == 431 and "certificate" in text


def test_a_seed_abandoned_by_a_dead_server_is_taken_over(cloud):
    """A cached copy left Creating by a job whose server died (no progress for 10 minutes) is started over."""
    from datetime import timedelta

    from sqlalchemy import select

    from volstack.db.image_models import Template, TemplatePoolRef
    from volstack.db.models import utcnow
    from volstack.db.storage_models import StoragePool
    api = cloud["api"]
    add_store(cloud)
    t = templates_with_data(cloud, [1])[0]
    with cloud["server"].db.session() as s:
        tid = s.scalar(select(Template.id).where(Template.uuid == t["id"]))
        pid = s.scalar(select(StoragePool.id).where(StoragePool.uuid == cloud["pool"]["id"]))
        s.add(TemplatePoolRef(template_id=tid, pool_id=pid, install_path=f"tmpl-{t['id']}", state="Creating",
                              last_used=utcnow() - timedelta(minutes=11)))
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  templateid=t["id"])["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    qemu_io(cloud["tmp"] / "primary" / root["path"], "read -P 0x41 0 1M")


def test_a_failed_seed_is_retried_by_the_next_deploy(cloud, web):
    """The first deploy fails (the source answers 404 once), the copy is marked Failed with the reason,
    and the next deploy fetches it again instead of being refused forever."""
    api, tmp = cloud["api"], cloud["tmp"]
    allow_loopback(api)
    url = web.add("/flaky.qcow2", data=qemu_bytes(tmp, "flaky.qcow2", 1, fill=0x46))
    t = api.registerTemplate(name="flaky", url=url, format="QCOW2", hypervisor="KVM", zoneid=cloud["zone"]["id"],
                             directdownload=True)["template"][0]
    data = qemu_bytes(tmp, "flaky.qcow2", 1, fill=0x46)
    web.add("/flaky.qcow2", data=data, fail="404")
    code, text = error_of(lambda: api.deployVirtualMachine(zoneid=cloud["zone"]["id"], templateid=t["id"],
                                                           serviceofferingid=cloud["so"]["id"], rootdisksize=1))
    assert code == 533 and "404" in text
    details = api.listTemplates(templatefilter="all", id=t["id"])["template"][0]["downloaddetails"]
    assert [d["downloadState"] for d in details if d["datastoreRole"] == "Primary"] == ["DOWNLOAD_ERROR"]
    web.add("/flaky.qcow2", data=data)                    # the source is back
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  templateid=t["id"], rootdisksize=1)["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    qemu_io(tmp / "primary" / root["path"], "read -P 0x46 0 1M")
