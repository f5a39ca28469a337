"""Issue 13 on Simulator hosts, on SQLite and PostgreSQL: passphrases (made, stored encrypted, never shown,
destroyed), the capability table and the allocator, CloudStack's refusals, a damaged passphrase, rotate-key.
The bytes on real pools are checked in test_encryption_real.py."""
import json

import pytest
from cs import CloudStackApiException
from sqlalchemy import func, select

from support import add_datacenter, client
from test_templates import cloud  # noqa: F401  (a fixture: a simulator agent with a real file pool)
from volstack import crypto
from volstack.cli import main as volstack_main
from volstack.db.storage_models import Passphrase, Volume
from volstack.drivers import DRIVERS
from volstack.drivers.default import DefaultPrimaryDriver

GIB = 2 ** 30


class NoCryptDriver(DefaultPrimaryDriver):
    """A driver whose pools cannot encrypt (as a vendor array's LUNs without a LUKS layer)."""
    name = "NoCrypt"
    CAPABILITIES = {k: v for k, v in DefaultPrimaryDriver.CAPABILITIES.items() if k != "encryption"}


@pytest.fixture
def dc(server_any_db, monkeypatch):
    monkeypatch.setitem(DRIVERS, "NoCrypt", NoCryptDriver())
    api = client(server_any_db)
    d = add_datacenter(api, "ez", "ep", "ec", ["http://sime"])
    plain = api.createStoragePool(name="plain", url="nfs://10.0.0.1/plain", provider="NoCrypt", tags="T",
                                  capacitybytes=100 * GIB, **d["at"])["storagepool"]
    enc = api.createDiskOffering(name="enc", displaytext="enc", customized=True, encrypt=True, tags="T")["diskoffering"]
    clear = api.createDiskOffering(name="clear", displaytext="clear", customized=True, tags="T")["diskoffering"]
    so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=256, displaytext="s")["serviceoffering"]
    vm = api.deployVirtualMachine(zoneid=d["zone"]["id"], serviceofferingid=so["id"], rootdisksize=1)["virtualmachine"]
    return dict(d, api=api, ms=server_any_db, plain=plain, enc=enc, clear=clear, vm=vm)


def _stored(ms) -> list[str]:
    with ms.db.session(readonly=True) as s:
        return [r.passphrase for r in s.scalars(select(Passphrase))]


def _secrets(ms) -> list[str]:
    return [crypto.decrypt(x) for x in _stored(ms)]


def _vol(api, dc, offering, name="v"):
    return api.createVolume(name=name, zoneid=dc["zone"]["id"], diskofferingid=offering["id"], size=1)["volume"]


def test_capability_table_keeps_encrypted_volumes_off_pools_that_cannot_encrypt(dc):
    api = dc["api"]
    assert api.listStoragePools(id=dc["plain"]["id"])["storagepool"][0]["storagecapabilities"].get("encryption") \
        is None
    vol = _vol(api, dc, dc["enc"])
    with pytest.raises(CloudStackApiException) as e:
        api.attachVolume(id=vol["id"], virtualmachineid=dc["vm"]["id"])
    err = e.value.error
    assert err["errorcode"] == 533 and "plain: its driver (NoCrypt) cannot encrypt volumes" in err["errortext"], err
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Allocated"
    # a pool that can encrypt takes it; a clear volume still goes to the pool that cannot
    good = api.createStoragePool(name="good", url="nfs://10.0.0.1/good", tags="T", capacitybytes=100 * GIB,
                                 **dc["at"])["storagepool"]
    assert good["storagecapabilities"]["encryption"] == "true"
    att = api.attachVolume(id=vol["id"], virtualmachineid=dc["vm"]["id"])["volume"]
    assert (att["storageid"], att["encryptformat"]) == (good["id"], "LUKS")
    plain = api.attachVolume(id=_vol(api, dc, dc["clear"], "c")["id"], virtualmachineid=dc["vm"]["id"])["volume"]
    assert "encryptformat" not in plain
    # and it is never moved there
    api.detachVolume(id=vol["id"])
    with pytest.raises(CloudStackApiException) as e:
        api.migrateVolume(volumeid=vol["id"], storageid=dc["plain"]["id"])
    assert e.value.error["errorcode"] == 533 and "cannot encrypt volumes" in e.value.error["errortext"]
    found = api.findStoragePoolsForMigration(id=vol["id"])["storagepool"]
    assert [p["suitableformigration"] for p in found if p["id"] == dc["plain"]["id"]] == [False]
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Ready"


def test_passphrase_is_made_stored_encrypted_never_shown_and_destroyed_with_the_volume(dc):
    api, ms = dc["api"], dc["ms"]
    api.createStoragePool(name="good", url="nfs://10.0.0.1/good", tags="T", capacitybytes=100 * GIB, **dc["at"])
    vol = _vol(api, dc, dc["enc"])
    clear = _vol(api, dc, dc["clear"], "c")
    assert len(_stored(ms)) == 1
    secret = _secrets(ms)[0]
    assert len(secret) >= 40 and secret not in _stored(ms)[0], "stored Fernet-encrypted"
    assert [v["id"] for v in api.listVolumes(isencrypted=True)["volume"]] == [vol["id"]]
    assert {v["id"] for v in api.listVolumes(isencrypted=False)["volume"]} >= {clear["id"]}
    att = api.attachVolume(id=vol["id"], virtualmachineid=dc["vm"]["id"])
    api.detachVolume(id=vol["id"])
    shown = json.dumps([att, api.listVolumes(listall=True), api.listEvents(listall=True, page=1, pagesize=500)])
    assert secret not in shown
    # CloudStack's rules: no schedules, no templates, no encrypted uploads
    with pytest.raises(CloudStackApiException) as e:
        api.createSnapshotPolicy(volumeid=vol["id"], intervaltype="DAILY", schedule="00:01", maxsnaps=1,
                                 timezone="UTC")
    assert e.value.error["errorcode"] == 431 and "don't support snapshot schedules" in e.value.error["errortext"]
    with pytest.raises(CloudStackApiException) as e:
        api.createTemplate(volumeid=vol["id"], name="t", displaytext="t", ostypeid=_ostype(api))
    assert e.value.error["errorcode"] == 431 and "encrypted volume" in e.value.error["errortext"]
    with pytest.raises(CloudStackApiException) as e:
        api.getUploadParamsForVolume(name="u", zoneid=dc["zone"]["id"], format="QCOW2", diskofferingid=dc["enc"]["id"])
    assert e.value.error["errorcode"] == 431 and "encrypts volumes" in e.value.error["errortext"]
    api.deleteVolume(id=vol["id"])
    assert _stored(ms) == [], "deleting the volume destroyed its passphrase"
    with ms.db.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(Volume).where(Volume.passphrase_id.isnot(None))) == 0


def test_vm_snapshot_with_memory_is_refused_for_a_vm_with_an_encrypted_volume(dc):
    api = dc["api"]
    api.createStoragePool(name="good", url="nfs://10.0.0.1/good", tags="T", capacitybytes=100 * GIB, **dc["at"])
    api.attachVolume(id=_vol(api, dc, dc["enc"])["id"], virtualmachineid=dc["vm"]["id"])
    with pytest.raises(CloudStackApiException) as e:
        api.createVMSnapshot(virtualmachineid=dc["vm"]["id"], snapshotmemory=True)
    assert e.value.error["errorcode"] == 431 and "VM snapshots with memory are not supported" in \
        e.value.error["errortext"], e.value.error
    assert api.listVMSnapshot(virtualmachineid=dc["vm"]["id"]).get("vmSnapshot", []) == []


def _ostype(api):
    return api.listOsTypes()["ostype"][0]["id"]


def test_a_damaged_passphrase_is_a_clear_error_and_the_volume_stays_as_it_was(dc):
    api, ms = dc["api"], dc["ms"]
    api.createStoragePool(name="good", url="nfs://10.0.0.1/good", tags="T", capacitybytes=100 * GIB, **dc["at"])
    vol = _vol(api, dc, dc["enc"])
    with ms.db.session() as s:
        row = s.scalar(select(Passphrase))
        row.passphrase = row.passphrase[:-8] + "AAAAAAAA"
    with pytest.raises(CloudStackApiException) as e:
        api.attachVolume(id=vol["id"], virtualmachineid=dc["vm"]["id"])
    assert e.value.error["errorcode"] == 530 and "cannot be decrypted with this server's key" in \
        e.value.error["errortext"], e.value.error
    listed = api.listVolumes(id=vol["id"])["volume"][0]
    assert listed["state"] == "Allocated" and "storageid" not in listed and "virtualmachineid" not in listed


def test_rotate_key_rewraps_every_secret_and_only_them(dc, tmp_path):
    api, ms = dc["api"], dc["ms"]
    api.createStoragePool(name="good", url="nfs://10.0.0.1/good", tags="T", capacitybytes=100 * GIB, **dc["at"])
    vols = [_vol(api, dc, dc["enc"], f"e{i}") for i in range(2)]
    api.attachVolume(id=vols[0]["id"], virtualmachineid=dc["vm"]["id"])
    before_plain, before_stored = _secrets(ms), _stored(ms)
    key_file = tmp_path / "volstack.key"
    old_key = key_file.read_bytes()
    assert volstack_main(["rotate-key", "--db", ms.db.url, "--key-file", str(key_file)]) == 0
    assert key_file.read_bytes() != old_key and (key_file.stat().st_mode & 0o777) == 0o600
    assert not (tmp_path / "volstack.key.new").exists()
    after_stored = _stored(ms)
    assert set(after_stored).isdisjoint(before_stored)
    with pytest.raises(RuntimeError):
        crypto.decrypt(after_stored[0])          # this process still has the old key, as a server not restarted
    crypto.load_key(key_file)                    # "restart": the new key opens the same passphrases
    assert sorted(_secrets(ms)) == sorted(before_plain)
    api = client(ms)                             # the admin's API secret was re-wrapped too
    assert {v["id"] for v in api.listVolumes(isencrypted=True)["volume"]} == {v["id"] for v in vols}
    api.detachVolume(id=vols[0]["id"])
    # a key file that does not belong to the database changes nothing
    other = tmp_path / "other.key"
    other.write_bytes(b"x2aJ2ODt9jmBvZB8bcgO0Rf1uTvkGYz-gJ2oCdl_4Wg=")
    assert volstack_main(["rotate-key", "--db", ms.db.url, "--key-file", str(other)]) == 1
    assert sorted(_secrets(ms)) == sorted(before_plain)


def test_root_volume_from_a_template_is_an_encrypted_full_copy_and_the_cache_stays_clear(tmp_path, cloud):
    """A real qemu-img on a SharedMountPoint pool (the agent's hypervisor is the simulator): the template's data
    is read back through the passphrase, is not in clear in the ROOT image, which has no backing file."""
    import subprocess
    from test_templates import add_store, img_info, template_from_a_volume
    api, tmp = cloud["api"], cloud["tmp"]
    add_store(cloud)
    _, _, t = template_from_a_volume(cloud)            # 0x5a over 1-3 MiB of a 2 GiB qcow2
    so = api.createServiceOffering(name="encroot", cpunumber=1, cpuspeed=500, memory=128, displaytext="e",
                                   encryptroot=True)["serviceoffering"]
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=so["id"],
                                  templateid=t["id"])["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    assert root["encryptformat"] == "LUKS" and root["templateid"] == t["id"]
    image, cached = tmp / "primary" / root["path"], tmp / "primary" / f"tmpl-{t['id']}"
    info = img_info(image)
    assert info["encrypted"] and "backing-filename" not in info, "a full copy, not a linked clone"
    assert not img_info(cached).get("encrypted"), "the template's cached copy stays clear"
    assert b"\x5a" * 4096 not in image.read_bytes()
    secret = tmp_path / "s"
    with cloud["server"].db.session(readonly=True) as s:
        secret.write_text(crypto.decrypt(s.scalar(select(Passphrase)).passphrase))
    r = subprocess.run(["qemu-io", "--object", f"secret,id=k,file={secret}", "--image-opts",
                        f"driver=qcow2,encrypt.key-secret=k,file.filename={image}", "-c", "read -P 0x5a 1M 2M"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr
