"""extractTemplate, extractIso, extractVolume: a signed, expiring HTTP URL on a zone host's agent that
streams the object from its image store (agent/transfer.py).

The URL lives `extract.url.expiration.interval` seconds from its publication. A volume on primary storage
is first copied to a writable image store as a flat qcow2 (as CloudStack does); the URL serves that copy,
which the cleanup (every `extract.url.cleanup.interval`) deletes once the URL expired. While the copy is
made (state Creating) the cleanup leaves it alone unless no extractVolume job of that volume is still
pending (its management server died); either side loses the race cleanly (lifecycle EXTRACT): a copy the
cleanup expired is deleted by the job instead of being published. Agents are called outside write
transactions. Only HTTP_DOWNLOAD: FTP_UPLOAD is refused, as in current CloudStack.
"""
import logging
import re
from datetime import datetime

from sqlalchemy import or_, select, update

from volstack.db.image_models import ImageStore, ImageTransfer, Template
from volstack.db.models import AsyncJob, utcnow
from volstack.db.storage_models import StoragePool, VirtualMachine, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, InvalidParameter, PermissionDenied, ResourceInUse, ResourceUnavailable
from volstack.services import encryption, events, imagestores, infra, settings as S, templates
from volstack.services.context import check_access
from volstack.services.lifecycle import EXTRACT
from volstack.transfer_signing import parse_expiry

log = logging.getLogger("volstack.extracts")


def _check_request(s, ctx, mode) -> None:
    if not ctx.is_root_admin and S.Settings.value_in(s, S.DISABLE_EXTRACTION):
        raise PermissionDenied("Extraction has been disabled by admin (disable.extraction=true)")
    m = (mode or "").upper()
    if m == "FTP_UPLOAD":
        raise InvalidParameter("Extract mode FTP_UPLOAD is not supported: use mode=HTTP_DOWNLOAD and download the "
                               "returned url")
    if m != "HTTP_DOWNLOAD":
        raise InvalidParameter(f"Please specify a valid extract mode: HTTP_DOWNLOAD (got {mode!r})")


def _filename(name: str, path: str) -> str:
    ext = path.rsplit(".", 1)[-1] if "." in path else "img"
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('._') or 'image'}.{ext}"


def _signed(s, tr: ImageTransfer, store: ImageStore, host, name: str) -> dict:
    """The URL's columns, valid extract.url.expiration.interval seconds from now."""
    seconds = S.Settings.value_in(s, S.EXTRACT_URL_EXPIRATION)
    url, expires = imagestores.signed_download(host, store, tr.install_path, _filename(name, tr.install_path),
                                               seconds)
    return {"url": url, "expires": parse_expiry(expires).replace(tzinfo=None), "host_id": host.id}


def extract_template(s, ctx, t: Template, *, mode, zoneid=None) -> ImageTransfer:
    _check_request(s, ctx, mode)
    what = "ISO" if t.format == "ISO" else "template"
    if t.template_type == "SYSTEM":
        raise InvalidParameter(f"Unable to extract the {what} {t.name} as it is a default System template")
    if not t.extractable and not ctx.is_root_admin:
        raise PermissionDenied(f"The {what} {t.name} is not allowed to be extracted (isextractable=false)")
    check_access(s, ctx, t.account_id, what)
    if t.direct_download:
        raise InvalidParameter(f"The {what} {t.name} is a direct-download {what}: it is on no image store; "
                               f"download it from {t.url}")
    zones = [infra.get_zone(s, zoneid)] if zoneid else None
    ref = None
    for zone_id in ([z.id for z in zones] if zones else templates.zone_ids(s, t)):
        ref = templates.ready_in_zone(s, t, zone_id)
        if ref is not None:
            break
    if ref is None:
        raise InvalidParameter(f"The {what} {t.name} has not been downloaded to an image store"
                               + (f" in zone {zones[0].name}" if zones else "") + " yet")
    store = s.get(ImageStore, ref.store_id)
    tr = ImageTransfer(kind="extract", object_type="Iso" if what == "ISO" else "Template", object_id=t.id,
                       object_uuid=t.uuid, account_id=t.account_id, zone_id=store.zone_id, store_id=store.id,
                       install_path=ref.install_path, mode="HTTP_DOWNLOAD", state="Ready")
    for k, v in _signed(s, tr, store, imagestores.serving_host(s, store, simulated=True), t.name).items():
        setattr(tr, k, v)
    s.add(tr)
    s.flush()
    events.record(s, ctx, "ISO.EXTRACT" if what == "ISO" else "TEMPLATE.EXTRACT",
                  f"Extract URL for {what} {t.name} created, valid until {tr.expires:%Y-%m-%d %H:%M:%S} UTC",
                  resource_type="Template", resource_uuid=t.uuid)
    return tr


def check_volume(s, ctx, vol: Volume, *, mode, zoneid) -> None:
    """CloudStack's rules for extractVolume, before any copying."""
    _check_request(s, ctx, mode)
    zone = infra.get_zone(s, zoneid)
    if vol.zone_id != zone.id:
        raise InvalidParameter(f"Volume {vol.name} is not in zone {zone.name}")
    if vol.pool_id is None:
        raise InvalidParameter(f"Volume {vol.name} ({vol.state}) is on no storage pool, so it cannot be extracted")
    if vol.vm_id is not None:
        vm = s.get(VirtualMachine, vol.vm_id)
        if vm is not None and vm.state != "Stopped":
            raise PermissionDenied(f"Invalid state of volume {vol.name}: it should be either detached or its VM "
                                   f"{vm.name} stopped (the VM is {vm.state})")
    if vol.volume_type != "DATADISK" and vol.template_id is not None:
        t = s.get(Template, vol.template_id)
        if t is not None and (not t.extractable or t.template_type == "SYSTEM") and not ctx.is_root_admin:
            raise PermissionDenied(f"Volume {vol.name} is not allowed to be extracted: its template {t.name} is not "
                                   "extractable")
    if vol.state != "Ready":
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Ready volumes can be extracted")


def extract_volume(s, ctx, vol: Volume, *, mode, zoneid, progress=None) -> ImageTransfer:
    """The extractVolume job: copy the volume to a store (flat qcow2), then sign a URL for that copy."""
    from volstack.services.pools import hosts_in_scope
    check_volume(s, ctx, vol, mode=mode, zoneid=zoneid)
    stores = imagestores.writable_stores(s, vol.zone_id)
    if not stores:
        raise ResourceUnavailable(f"No writable image store in the zone of volume {vol.name} to extract it to; add "
                                  "one with addImageStore")
    store = stores[0]
    pool = s.get(StoragePool, vol.pool_id)
    copiers = hosts_in_scope(s, pool)
    if not copiers:
        raise ResourceUnavailable(f"No Up host reaches storage pool {pool.name} to read volume {vol.name}")
    server, deleter = imagestores.serving_host(s, store, simulated=True), imagestores.host_for(s, store)
    # expires: the URL's validity starts at publication; the cleanup does not read it while Creating
    tr = ImageTransfer(kind="extract", object_type="Volume", object_id=vol.id, object_uuid=vol.uuid,
                       account_id=vol.account_id, zone_id=vol.zone_id, store_id=store.id, own_copy=True,
                       install_path="", mode="HTTP_DOWNLOAD", state="Creating", expires=utcnow())
    s.add(tr)
    s.flush()
    tr.install_path = f"extract-{tr.uuid}.qcow2"
    enc = encryption.spec(s, vol)
    s.commit()          # a crash during the copy leaves a row the cleanup settles once the job is over
    try:
        run_long(channel(copiers[0]), "volume_copy", progress, src_pool=driver_for(pool.provider).spec(pool),
                 src_name=vol.path, src_format=vol.format.lower(), dst_pool=imagestores.spec(store),
                 dst_name=tr.install_path, format="qcow2",
                 **({"src_encryption": enc, "encryption": enc} if enc else {}))   # the download stays encrypted
    except CloudError as exc:       # the cleanup deletes whatever the copy left on the store
        try:
            EXTRACT.fire(s, tr, "Expire", error=exc.text)
            s.commit()
        except ResourceInUse:       # it expired the row meanwhile
            s.rollback()
        raise
    try:
        EXTRACT.fire(s, tr, "Publish", **_signed(s, tr, store, server, vol.name))
    except ResourceInUse:
        # The cleanup took the job for dead and expired the row: the copy is nobody's, so it goes now.
        name, path, spec, ch, where = vol.name, tr.install_path, imagestores.spec(store), channel(deleter), store.name
        s.rollback()            # before the agent call: no write transaction held meanwhile
        try:
            ch.call("volume_delete", pool=spec, name=path)
        except CloudError as exc:
            log.warning("extract copy %s of volume %s: %s; remove it from image store %s", path, name, exc.text,
                        where)
        raise ResourceInUse(f"The extraction of volume {name} was cancelled by the extract URL cleanup while its "
                            "copy was made; extract the volume again") from None
    events.record(s, ctx, "VOLUME.EXTRACT", f"Volume {vol.name} copied to image store {store.name} for extraction; "
                  f"URL valid until {tr.expires:%Y-%m-%d %H:%M:%S} UTC", resource_type="Volume", resource_uuid=vol.uuid)
    return tr


def _copy_in_progress(s, tr: ImageTransfer) -> bool:
    """An extractVolume job of the volume is still pending (queued, running, or to be retried)."""
    return s.scalar(select(AsyncJob.id).where(AsyncJob.cmd == "extractVolume", AsyncJob.status == 0,
                                              AsyncJob.instance_uuid == tr.object_uuid).limit(1)) is not None


def cleanup(db, now: datetime | None = None) -> int:
    """Expired extract URLs, and copies whose extractVolume job died: marked Expired (committed), then their
    own store copies are deleted (retried next time if the store cannot be reached), then they are removed.
    Returns how many were removed."""
    now = now or utcnow()
    with db.session(readonly=True) as s:
        ids = list(s.scalars(select(ImageTransfer.id).where(
            ImageTransfer.kind == "extract", ImageTransfer.removed.is_(None),
            or_(ImageTransfer.state.in_(("Creating", "Expired")), ImageTransfer.expires <= now))))
    done = 0
    for tid in ids:
        try:
            with db.session() as s:
                tr = s.get(ImageTransfer, tid)
                if (tr.state == "Creating" and _copy_in_progress(s, tr)) or (tr.state == "Ready" and tr.expires > now):
                    continue
                if tr.state != "Expired":
                    EXTRACT.fire(s, tr, "Expire")
        except ResourceInUse:           # moved meanwhile (published, or another server's cleanup)
            continue
        if tr.own_copy and not imagestores.delete_object(db, tr.store_id, tr.install_path, f"extract URL {tr.uuid}"):
            continue
        with db.session() as s:
            s.execute(update(ImageTransfer).where(ImageTransfer.id == tid, ImageTransfer.state == "Expired",
                                                  ImageTransfer.removed.is_(None)).values(removed=utcnow()))
        done += 1
    return done


def store_objects(s, store) -> list[tuple]:
    """Extract copies of volumes on the store (listImageStoreObjects, deleteImageStore)."""
    rows = s.execute(select(ImageTransfer.install_path, Volume.uuid, Volume.name)
                     .join(Volume, Volume.id == ImageTransfer.object_id)
                     .where(ImageTransfer.kind == "extract", ImageTransfer.own_copy.is_(True),
                            ImageTransfer.removed.is_(None), ImageTransfer.store_id == store.id))
    return [("volume", r.uuid, r.name, r.install_path) for r in rows]


imagestores.object_sources.append(store_objects)
