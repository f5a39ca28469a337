"""Volume encryption: which volumes are encrypted, their passphrases, and what hosts are told.

A volume whose disk offering has `encrypt=true` (a ROOT volume: its service offering's `encryptroot`) gets a
random passphrase when its image is first made (lazy, like the image itself). The passphrase is stored
Fernet-encrypted with the server key (`passphrase` row, CloudStack's table name), decrypted only to build the
`encryption` argument of one agent request, and never put in a response, an event or a log line. Snapshots of
the volume share the row; it is deleted with the last volume or snapshot that uses it (deleting a volume
destroys its passphrase unless snapshots still need it to be read).
"""
import secrets

from sqlalchemy import func, select

from volstack import crypto
from volstack.db.snapshot_models import Snapshot
from volstack.db.storage_models import DiskOffering, Passphrase, StoragePool, Volume
from volstack.drivers import driver_for
from volstack.errors import CloudError, InvalidParameter

FORMAT = "LUKS"                 # encryptformat in responses, as CloudStack's KVM volumes show it


class PassphraseUnavailable(CloudError):
    """The stored passphrase cannot be read (another key file, a damaged row): the volume cannot be opened."""
    errorcode = 530


def wanted(s, vol: Volume) -> bool:
    """Whether the volume is (or, once made, will be) encrypted."""
    if vol.passphrase_id is not None:
        return True
    offering = s.get(DiskOffering, vol.disk_offering_id) if vol.disk_offering_id else None
    return bool(offering and offering.encrypt)


def is_encrypted(vol) -> bool:
    return vol.passphrase_id is not None


def new_passphrase(s) -> int:
    row = Passphrase(passphrase=crypto.encrypt(secrets.token_urlsafe(32)))     # 256 random bits
    s.add(row)
    s.flush()
    return row.id


def prepare(s, vol: Volume) -> dict | None:
    """Before an encrypted volume's image is made: its passphrase (made now if it has none) as the agent's
    `encryption` argument; None for a clear volume."""
    if not wanted(s, vol):
        return None
    if vol.passphrase_id is None:
        vol.passphrase_id = new_passphrase(s)
    vol.encrypt_format = FORMAT
    return spec(s, vol)


def spec(s, obj) -> dict | None:
    """The agent's `encryption` argument for a volume or snapshot: {"format": "luks", "secret": passphrase}."""
    if obj.passphrase_id is None:
        return None
    row = s.get(Passphrase, obj.passphrase_id)
    what = f"{type(obj).__name__.lower()} {getattr(obj, 'name', obj.id)}"
    if row is None:
        raise PassphraseUnavailable(f"The passphrase of encrypted {what} is missing; the volume cannot be opened "
                                    "(it is left as it is)")
    try:
        secret = crypto.decrypt(row.passphrase)
    except RuntimeError:
        raise PassphraseUnavailable(f"The passphrase of encrypted {what} cannot be decrypted with this server's key "
                                    "file (a wrong or rotated key, or a damaged row); nothing was changed") from None
    return {"format": "luks", "secret": secret}


def add_secrets(s, vm, disks: list) -> None:
    """Disks a host reported (without passphrases) get their volume's, by serial, for another host to open them."""
    from volstack.drivers.default import serial_of
    by_serial = {serial_of(v): v for v in s.scalars(select(Volume).where(Volume.vm_id == vm.id,
                                                                          Volume.removed.is_(None)))}
    for d in disks:
        if isinstance(d, dict) and d.get("encryption") and d.get("serial") in by_serial:   # simulated hosts: serials
            d["encryption"] = spec(s, by_serial[d["serial"]])


def can_encrypt(pool: StoragePool) -> bool:
    return bool(driver_for(pool.provider).CAPABILITIES.get("encryption"))


def check_pool(s, vol: Volume, pool: StoragePool, what: str = "hold") -> None:
    """An encrypted volume never goes to a pool whose driver cannot encrypt (431, with the reason)."""
    if wanted(s, vol) and not can_encrypt(pool):
        raise InvalidParameter(f"Volume {vol.name} is encrypted and storage pool {pool.name} "
                               f"({driver_for(pool.provider).name}) cannot {what} encrypted volumes")


def release(s, passphrase_id: int | None) -> None:
    """Delete a passphrase no volume or snapshot uses any more (its data can never be read again)."""
    if passphrase_id is None:
        return
    users = s.scalar(select(func.count()).select_from(Volume).where(
        Volume.passphrase_id == passphrase_id, Volume.removed.is_(None))) + s.scalar(
        select(func.count()).select_from(Snapshot).where(Snapshot.passphrase_id == passphrase_id,
                                                         Snapshot.removed.is_(None)))
    if users == 0:
        s.execute(Volume.__table__.update().where(Volume.passphrase_id == passphrase_id).values(passphrase_id=None))
        s.execute(Snapshot.__table__.update().where(Snapshot.passphrase_id == passphrase_id)
                  .values(passphrase_id=None))
        row = s.get(Passphrase, passphrase_id)
        if row is not None:
            s.delete(row)


def _released(s, row, before, after) -> None:
    """A volume or snapshot was removed: its passphrase goes once nothing else uses it."""
    if getattr(row, "removed", None) is not None and row.passphrase_id is not None:
        release(s, row.passphrase_id)


def _register():
    from volstack.services.lifecycle import SNAPSHOT, VOLUME
    VOLUME.observers.append(_released)
    SNAPSHOT.observers.append(_released)


_register()


# ---------------------------------------------------------------- CloudStack's rules on what stays encrypted

def refuse_template(obj) -> None:
    """Templates are stored and cached unencrypted, so none is made from encrypted data (CloudStack's rule)."""
    if obj.passphrase_id is not None:
        kind = type(obj).__name__.lower()
        raise InvalidParameter(f"Cannot create a template from encrypted {kind} {obj.name}: templates are stored "
                               "unencrypted and the volume's data must never be written in clear")


def refuse_memory_snapshot(vm, vols) -> None:
    """QEMU 7.2 aborts (and so kills the guest) when it saves a VM's memory into an encrypted qcow2
    (qcow2_co_encdec: unaligned vmstate writes); and memory saved into a clear disk would hold what the guest
    read from its encrypted ones. So a VM with an encrypted volume gets disk-only VM snapshots."""
    enc = [v.name for v in vols if v.passphrase_id is not None]
    if enc:
        raise InvalidParameter(f"VM {vm.name} has encrypted volumes ({', '.join(enc)}): VM snapshots with memory are "
                               "not supported for it (its memory would be saved unencrypted or, into an encrypted "
                               "image, crash QEMU); take a VM snapshot without memory (snapshotmemory=false)")


def refuse_upload(offering) -> None:
    if offering is not None and offering.encrypt:
        raise InvalidParameter(f"Disk offering {offering.name} encrypts volumes; an uploaded image arrives in clear "
                               "and cannot be placed on it: use an offering without encrypt")


def refuse_policy(vol) -> None:
    if vol.passphrase_id is not None:
        raise InvalidParameter(f"Encrypted volumes don't support snapshot schedules, cannot create snapshot policy "
                               f"for the volume {vol.name}; take manual snapshots")
