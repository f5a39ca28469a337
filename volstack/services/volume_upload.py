"""uploadVolume: a volume whose first image comes from a URL. A host agent downloads it into an image
store (checksum verified, image probed once); the volume is then Uploaded, and its first attach
copies it to the primary pool the allocator picks (Copying → Ready), as CloudStack does."""
from sqlalchemy import select

from volstack.db.image_models import ImageStore
from volstack.db.storage_models import StoragePool, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, InvalidParameter, ResourceUnavailable
from volstack.services import encryption, events, imagestores, infra, offerings, templates, volumes
from volstack.services import settings as S
from volstack.services.lifecycle import VOLUME

FORMATS = {"QCOW2": "qcow2", "RAW": "raw"}


def create(s, ctx, *, name, url, zoneid, format, checksum=None, diskofferingid=None, imagestoreuuid=None) -> Volume:
    """The volume row (Allocated) with where its bytes will land; the job downloads them."""
    url = templates.check_url(url)
    vol, store = new_upload(s, ctx, name=name, zoneid=zoneid, format=format, checksum=checksum,
                            diskofferingid=diskofferingid, imagestoreuuid=imagestoreuuid)
    vol.details = {"upload": {**vol.details["upload"], "url": url}}
    events.record(s, ctx, "VOLUME.UPLOAD", f"Volume {name} being uploaded from {url}", resource_type="Volume",
                  resource_uuid=vol.uuid)
    return vol


def new_upload(s, ctx, *, name, zoneid, format, checksum=None, diskofferingid=None, imagestoreuuid=None):
    """(volume row, store): a volume whose image will land on a writable store of the zone (uploadVolume
    from a URL, or getUploadParamsForVolume from a browser)."""
    fmt = (format or "").upper()
    if fmt not in FORMATS:
        raise InvalidParameter(f"Invalid format {format}: KVM volumes are uploaded as QCOW2 or RAW")
    templates.parse_checksum(checksum)
    encryption.refuse_upload(offerings.get_disk_offering(s, ctx, diskofferingid) if diskofferingid else None)
    zone = infra.get_zone(s, zoneid)
    if imagestoreuuid:
        store = imagestores.get_store(s, imagestoreuuid)
        if store.zone_id != zone.id or store.readonly:
            raise InvalidParameter(f"Image store {store.name} is not a writable store of zone {zone.name}")
    else:
        stores = imagestores.writable_stores(s, zone.id)
        if not stores:
            raise ResourceUnavailable(f"No writable image store in zone {zone.name}: add one with addImageStore")
        store = stores[0]
    offering = offerings.get_disk_offering(s, ctx, diskofferingid) if diskofferingid else None
    vol = volumes.new_volume(s, ctx, name=name, zone_id=zone.id, size=0, offering=offering)
    vol.format = fmt
    vol.details = {"upload": {"store": store.uuid, "path": f"volume-{vol.uuid}.{FORMATS[fmt]}", "checksum": checksum}}
    return vol, store


def download(s, ctx, vol: Volume, progress=None) -> Volume:
    up = vol.details["upload"]
    store = imagestores.get_store(s, up["store"])
    VOLUME.fire(s, vol, "UploadRequested")
    s.commit()
    args = {"format": vol.format, "checksum": up.get("checksum"), "urls": [up["url"]],
            "options": {**templates.download_options(s), **templates.size_limit(s, S.MAX_UPLOAD_SIZE)}}
    try:
        res = run_long(channel(imagestores.host_for(s, store)), "template_download", progress,
                       pool=imagestores.spec(store), name=up["path"], **args)
    except CloudError as exc:
        VOLUME.fire(s, vol, "OperationFailed", error=f"upload failed: {exc.text}")
        events.record(s, ctx, "VOLUME.UPLOAD", f"Upload of volume {vol.name} failed: {exc.text}", level="ERROR",
                      resource_type="Volume", resource_uuid=vol.uuid)
        s.commit()
        raise
    VOLUME.fire(s, vol, "OperationSucceeded", size=res["size"], physical_size=res.get("physical_size"), error=None)
    events.record(s, ctx, "VOLUME.UPLOAD", f"Volume {vol.name} uploaded ({res['size']} bytes)", resource_type="Volume",
                  resource_uuid=vol.uuid)
    return vol


def copy_to_primary(s, ctx, vol: Volume, pool: StoragePool, host, progress=None) -> dict:
    """volumes.realize's hook for Uploaded volumes: the store copy becomes the volume's image on pool."""
    up = vol.details["upload"]
    store = s.scalar(select(ImageStore).where(ImageStore.uuid == up["store"]))
    fmt = FORMATS[vol.format]
    res = run_long(channel(host), "volume_copy", progress, src_pool=imagestores.spec(store), src_name=up["path"],
                   src_format=fmt, dst_pool=driver_for(pool.provider).spec(pool), dst_name=vol.path, format=fmt)
    _remove_store_copy(s, vol)
    return res


def _remove_store_copy(s, vol: Volume) -> None:
    up = (vol.details or {}).get("upload")
    if not up or up.get("removed"):
        return
    try:
        store = imagestores.get_store(s, up["store"])
        channel(imagestores.host_for(s, store)).call("volume_delete", pool=imagestores.spec(store), name=up["path"])
    except CloudError:
        return                     # left for the operator: listImageStoreObjects shows the file
    vol.details = {**vol.details, "upload": {**up, "removed": True}}


volumes.root_creators.insert(0, (lambda vol: vol.state in ("Copying", "Uploaded") and bool((vol.details or {}).get("upload")),
                                 copy_to_primary))
volumes.expunge_hooks.append(_remove_store_copy)


def store_objects(s, store) -> list[tuple]:
    rows = s.scalars(select(Volume).where(Volume.state.in_(("UploadOp", "Uploaded", "UploadError", "Copying",
                                                            "NotUploaded", "UploadInProgress")),
                                          Volume.removed.is_(None)))
    return [("volume", v.uuid, v.name, v.details["upload"]["path"]) for v in rows
            if (v.details or {}).get("upload", {}).get("store") == store.uuid]


imagestores.object_sources.append(store_objects)
