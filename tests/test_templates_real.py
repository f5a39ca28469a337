"""Issue 4 acceptance on real parts: nfs-ganesha for the image store and the primary pool, a real HTTP
server (and metalink mirrors) for the sources, a `volstack agent` doing every copy with qemu-img."""
import hashlib
import json
import subprocess
import uuid

import pytest

from agentproc import AgentProcess
from support import add_datacenter, client
from test_templates import allow_loopback, qemu_bytes, qemu_io, wait, wait_template

pytestmark = pytest.mark.slow


@pytest.fixture
def web():
    from httpserver import FileServer
    srv = FileServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def nfs_cloud(server, tmp_path, nfs_server):
    exports = []

    def export(name):
        pseudo, path = f"/{name}-{uuid.uuid4().hex[:8]}", tmp_path / name
        exports.append(pseudo)
        return nfs_server.add_export(pseudo, path), path
    agent = AgentProcess(tmp_path / "agent", hypervisor="simulator", name="kvm1").start()
    api = client(server)
    dc = add_datacenter(api, "nz", "np", "nc", [agent])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    store_url, store_dir = export("store")
    pool_url, pool_dir = export("pool")
    store = api.addImageStore(name="nfs-store", provider="NFS", url=store_url, zoneid=zone["id"])["imagestore"]
    pool = api.createStoragePool(name="nfs-pool", url=pool_url, zoneid=zone["id"], podid=pod["id"],
                                 clusterid=cl["id"])["storagepool"]
    so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=128, displaytext="s")["serviceoffering"]
    allow_loopback(api)
    yield dict(api=api, zone=zone, store=store, store_dir=store_dir, pool=pool, pool_dir=pool_dir, so=so,
               server=server, tmp=tmp_path)
    agent.stop()
    for pseudo in exports:
        nfs_server.remove_export(pseudo)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_template_on_an_nfs_store_then_two_deploys_at_once_on_an_nfs_pool(nfs_cloud, web):
    c, api = nfs_cloud, nfs_cloud["api"]
    data = qemu_bytes(c["tmp"], "src.qcow2", 2, fill=0x4e)
    url = web.add("/t.qcow2", data=data)
    t = api.registerTemplate(name="nfs-t", url=url, format="QCOW2", hypervisor="KVM", zoneid=c["zone"]["id"],
                             checksum="{SHA-256}" + hashlib.sha256(data).hexdigest())["template"][0]
    t = wait_template(api, t["id"])
    assert t["isready"] is True and t["status"] == "Download Complete"
    assert sha256(c["store_dir"] / f"{t['id']}.qcow2") == hashlib.sha256(data).hexdigest()

    async_api = client(c["server"], fetch_result=False)
    jobs = [async_api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"],
                                           templateid=t["id"])["jobid"] for _ in range(2)]
    vms = [wait({"server": c["server"]}, j)["virtualmachine"] for j in jobs]
    cached = sorted(p.name for p in c["pool_dir"].iterdir() if p.name.startswith("tmpl-"))
    assert cached == [f"tmpl-{t['id']}"]
    for vm in vms:
        root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
        path = c["pool_dir"] / root["path"]
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                                         capture_output=True, text=True).stdout)
        assert info["backing-filename"] == cached[0]
        qemu_io(path, "read -P 0x4e 0 2M")


def test_direct_download_metalink_skips_a_dead_and_a_corrupt_mirror(nfs_cloud, web):
    c, api = nfs_cloud, nfs_cloud["api"]
    data = qemu_bytes(c["tmp"], "dd.qcow2", 1, fill=0x6d)
    dead = web.add("/m1/dd.qcow2", data=data, fail="404")
    corrupt = web.add("/m2/dd.qcow2", data=data, fail="corrupt")
    good = web.add("/m3/dd.qcow2", data=data)
    digest = hashlib.sha256(data).hexdigest()
    meta = f"""<?xml version="1.0" encoding="UTF-8"?>
<metalink xmlns="urn:ietf:params:xml:ns:metalink">
  <file name="dd.qcow2">
    <size>{len(data)}</size>
    <hash type="sha-256">{digest}</hash>
    <url priority="1">{dead}</url>
    <url priority="2">{corrupt}</url>
    <url priority="3">{good}</url>
  </file>
</metalink>
"""
    url = web.add("/dd.metalink", data=meta.encode())
    t = api.registerTemplate(name="meta", url=url, format="QCOW2", hypervisor="KVM", zoneid=c["zone"]["id"],
                             directdownload=True)["template"][0]
    vm = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"],
                                  templateid=t["id"])["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    qemu_io(c["pool_dir"] / root["path"], "read -P 0x6d 0 1M")
    assert [p.name for p in c["store_dir"].iterdir()] == []          # never touched the image store
    served = {r[1] for r in web.requests if r[0] == "GET" and r[3] in (200, 206)}
    assert "/m3/dd.qcow2" in served


def test_browser_upload_to_an_nfs_store_then_extract_it_back_over_nfs(nfs_cloud):
    """The agent takes the POST into the NFS store (qemu-img over nfs://, under a temporary name) and
    serves the extract URL by reading the store over NFS (READ), with ranges."""
    import requests
    from test_transfers import browser_post, monitor
    c, api = nfs_cloud, nfs_cloud["api"]
    data = qemu_bytes(c["tmp"], "up.qcow2", 3, fill=0x2a)
    params = api.getUploadParamsForTemplate(name="nfs-up", displaytext="nfs-up", format="QCOW2", hypervisor="KVM",
                                            zoneid=c["zone"]["id"])["getuploadparams"]
    assert browser_post(params, data).status_code == 200
    monitor(c)
    t = api.listTemplates(templatefilter="self", id=params["id"])["template"][0]
    assert t["isready"] is True
    on_store = c["store_dir"] / f"{t['id']}.qcow2"
    assert sorted(p.name for p in c["store_dir"].iterdir()) == [on_store.name]
    subprocess.run(["qemu-img", "compare", str(c["tmp"] / "up.qcow2"), str(on_store)], check=True, capture_output=True)

    ex = api.extractTemplate(id=t["id"], mode="HTTP_DOWNLOAD")["template"]
    got = requests.get(ex["url"], timeout=60)
    assert got.status_code == 200 and got.content == on_store.read_bytes()
    part = requests.get(ex["url"], headers={"Range": "bytes=5-99"}, timeout=60)
    assert part.status_code == 206 and part.content == on_store.read_bytes()[5:100]
