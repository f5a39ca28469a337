"""getUploadParamsForVolume / getUploadParamsForTemplate / getUploadParamsForIso: browser uploads.

The command creates the object (volume NotUploaded; template or ISO with a NOT_UPLOADED store copy)
and returns signed POST parameters for a zone host's agent (agent/transfer.py), valid
`upload.operation.timeout` minutes. The agent streams the POSTed file to the image store, checks the
checksum and probes the image before it gets its final name, and records the outcome.

The management server learns that outcome by polling (`monitor`, every `upload.monitoring.interval`
seconds, as CloudStack's upload monitor does): agents never call the management server. Volume:
NotUploaded → UploadInProgress → Uploaded (or UploadError with the agent's reason); NotUploaded past
the expiry with no upload started → UploadAbandoned; an upload that stopped reporting for the timeout
→ UploadError. A template or ISO becomes Ready on its store. Once settled (committed), the agent is told
(`upload_collected`) so that it may prune the record. A file uploaded for an object deleted meanwhile
makes the transfer Orphaned; the file is removed from the store after the commit (retried each pass
until it is gone): agents are never called inside a write transaction.
"""
import logging
import time
from datetime import timezone

from sqlalchemy import select, update

from volstack.db.image_models import ImageStore, ImageTransfer, Template, TemplateStoreRef
from volstack.db.models import Host, utcnow
from volstack.db.storage_models import Volume
from volstack.drivers.hosts import channel
from volstack.errors import CloudError, InvalidParameter
from volstack.services import events, imagestores, settings as S, templates, volume_upload
from volstack.services.lifecycle import VOLUME
from volstack.transfer_signing import parse_expiry

log = logging.getLogger("volstack.uploads")
GIB = 1024 ** 3
OPEN = ("NotUploaded", "UploadInProgress")      # transfers the monitor still asks about
ORPHANED = "Orphaned"           # uploaded for an object deleted meanwhile; removed once its file is gone


def _params(s, store: ImageStore, obj, object_type: str, path: str, fmt: str, checksum, limit: S.ConfigKey):
    """Sign the POST parameters for obj and record the transfer; returns getuploadparams' fields."""
    host = imagestores.serving_host(s, store)
    gb = S.Settings.value_in(s, limit)
    minutes = S.Settings.value_in(s, S.UPLOAD_OPERATION_TIMEOUT)
    params = imagestores.signed_upload(host, store, obj.uuid, {
        "name": path, "format": fmt, "checksum": checksum, "max_size": gb * GIB,
        "limit_setting": f"{limit.name} = {gb} GB"}, minutes * 60)
    s.add(ImageTransfer(kind="upload", object_type=object_type, object_id=obj.id, object_uuid=obj.uuid,
                        account_id=obj.account_id, zone_id=store.zone_id, store_id=store.id, host_id=host.id,
                        install_path=path, url=params["postURL"], state="NotUploaded",
                        expires=parse_expiry(params["expires"]).replace(tzinfo=None)))
    return {"id": obj.uuid, **params}


def volume_params(s, ctx, *, name, zoneid, format, checksum=None, diskofferingid=None, imagestoreuuid=None):
    vol, store = volume_upload.new_upload(s, ctx, name=name, zoneid=zoneid, format=format, checksum=checksum,
                                          diskofferingid=diskofferingid, imagestoreuuid=imagestoreuuid)
    vol.state = "NotUploaded"
    out = _params(s, store, vol, "Volume", vol.details["upload"]["path"], vol.format, checksum, S.MAX_UPLOAD_SIZE)
    events.record(s, ctx, "VOLUME.UPLOAD", f"Volume {name} awaits a browser upload until {out['expires']}",
                  resource_type="Volume", resource_uuid=vol.uuid)
    return out


def template_params(s, ctx, *, is_iso: bool, zoneid, **register_args):
    if zoneid == "-1":
        raise InvalidParameter("A browser upload lands in one zone: pass its zoneid, not -1")
    t, refs = templates.register(s, ctx, url=None, upload=True, zoneid=zoneid, is_iso=is_iso, **register_args)
    ref = refs[0]
    t.state, ref.download_state = "NotUploaded", "NOT_UPLOADED"
    out = _params(s, s.get(ImageStore, ref.store_id), t, "Iso" if is_iso else "Template", ref.install_path, t.format,
                  t.checksum, S.MAX_TEMPLATE_SIZE)
    return out


# ---------------------------------------------------------------- learning the outcome

def monitor(db, ctx, now: float | None = None) -> int:
    """Ask the agents how the open uploads went and settle them; returns how many changed."""
    with db.session(readonly=True) as s:
        open_ = [(tr.id, tr.host_id, tr.object_uuid, tr.state) for tr in s.scalars(
            select(ImageTransfer).where(ImageTransfer.kind == "upload", ImageTransfer.removed.is_(None),
                                        ImageTransfer.state.in_((*OPEN, ORPHANED))))]
        hosts = {h.id: h for h in s.scalars(select(Host).where(Host.id.in_({r[1] for r in open_})))}
    changed = 0
    for tid, host_id, uuid, state in open_:
        if state == ORPHANED:           # its file could not be removed last time
            _remove_orphan(db, tid)
            continue
        asked = time.time() if now is None else now
        host = hosts.get(host_id)
        try:
            st = channel(host).call("upload_status", id=uuid) if host is not None else {"state": "gone"}
        except CloudError as exc:
            log.warning("upload %s: cannot ask host %s: %s", uuid, host.name, exc.text)
            continue
        try:
            with db.session() as s:
                tr = s.get(ImageTransfer, tid)
                moved = settle(s, ctx, tr, st, asked)
                outcome = tr.state
        except CloudError as exc:           # e.g. moved concurrently by another server: the next pass sees it
            log.warning("upload %s: %s", uuid, exc.text)
            continue
        changed += moved
        if not moved or outcome in OPEN:
            continue
        if outcome == ORPHANED:
            _remove_orphan(db, tid)
        if st.get("state") in ("done", "failed"):
            try:
                channel(host).call("upload_collected", id=uuid)
            except CloudError as exc:       # the agent keeps the record; nothing is lost
                log.warning("upload %s: telling host %s it was collected: %s", uuid, host.name, exc.text)
    return changed


def settle(s, ctx, tr: ImageTransfer, st: dict, asked: float) -> bool:
    """Apply what the agent reported (st, read at time `asked`) to the transfer and its object."""
    if tr.removed is not None or tr.state not in OPEN:
        return False            # settled since it was read, e.g. by another management server's monitor
    timeout = S.Settings.value_in(s, S.UPLOAD_OPERATION_TIMEOUT) * 60
    expires = tr.expires.replace(tzinfo=timezone.utc).timestamp()
    state = st.get("state")
    if state == "done":
        outcome, error = "Uploaded", None
    elif state == "failed":
        outcome, error = "UploadError", st.get("error") or "the upload failed"
    elif state == "in_progress" and asked - st.get("updated", asked) > timeout:
        outcome, error = "UploadError", f"the upload stalled: nothing arrived for {timeout // 60} minutes"
    elif state == "in_progress":
        outcome, error = "UploadInProgress", None
    elif asked > expires:           # no upload began before the parameters expired (or the host is gone)
        outcome = "UploadAbandoned"
        error = f"no file was uploaded before the upload parameters expired at {tr.expires:%Y-%m-%d %H:%M:%S} UTC"
    else:
        return False
    if outcome == tr.state and outcome == "UploadInProgress":
        _progress(s, tr, st)
        return False
    apply = _volume if tr.object_type == "Volume" else _template
    if not apply(s, ctx, tr, outcome, error, st) and outcome == "Uploaded":
        tr.state, tr.error = ORPHANED, None     # e.g. a template deleted while its file was on the way
        return True
    tr.state, tr.error = outcome, error
    if outcome != "UploadInProgress":
        tr.removed = utcnow()
    return True


def _progress(s, tr, st) -> None:
    if tr.object_type != "Volume":
        ref = _ref(s, tr)
        if ref is not None and st.get("total"):
            ref.download_pct = min(99, int(100 * st.get("received", 0) / st["total"]))


def _remove_orphan(db, tid: int) -> None:
    """Remove the file of an Orphaned transfer from its store, then the transfer."""
    with db.session(readonly=True) as s:
        tr = s.get(ImageTransfer, tid)
    if imagestores.delete_object(db, tr.store_id, tr.install_path, f"upload {tr.object_uuid} (its object is gone)"):
        with db.session() as s:
            s.execute(update(ImageTransfer).where(ImageTransfer.id == tid, ImageTransfer.state == ORPHANED,
                                                  ImageTransfer.removed.is_(None)).values(removed=utcnow()))


def _volume(s, ctx, tr, outcome, error, st) -> bool:
    """Move the volume; False when it no longer waits for this upload."""
    vol = s.get(Volume, tr.object_id)
    if vol is None or vol.state not in ("NotUploaded", "UploadInProgress"):
        return False
    if outcome == "UploadInProgress":
        VOLUME.fire(s, vol, "UploadRequested")
        return True
    if outcome == "Uploaded":
        res = st["result"]
        VOLUME.fire(s, vol, "OperationSucceeded", size=res["size"], physical_size=res.get("physical_size"), error=None)
        text, level = f"Volume {vol.name} uploaded ({res['size']} bytes)", "INFO"
    else:
        VOLUME.fire(s, vol, "OperationTimeout" if outcome == "UploadAbandoned" else "OperationFailed", error=error)
        text, level = f"Upload of volume {vol.name} failed: {error}", "ERROR"
    events.record(s, ctx, "VOLUME.UPLOAD", text, level=level, resource_type="Volume", resource_uuid=vol.uuid)
    return True


def _ref(s, tr) -> TemplateStoreRef | None:
    return s.scalar(select(TemplateStoreRef).where(TemplateStoreRef.template_id == tr.object_id,
                                                   TemplateStoreRef.store_id == tr.store_id))


def _template(s, ctx, tr, outcome, error, st) -> bool:
    """Move the template's store copy; False when the template or the copy is gone."""
    t, ref = s.get(Template, tr.object_id), _ref(s, tr)
    if t is None or ref is None or t.removed is not None or ref.state in ("Destroying", "Destroyed"):
        return False
    ref.updated = utcnow()
    if outcome == "UploadInProgress":
        t.state, ref.state, ref.download_state = "UploadInProgress", "Creating", "UPLOAD_IN_PROGRESS"
        _progress(s, tr, st)
        return True
    if outcome == "Uploaded":
        res = st["result"]
        t.state, ref.state, ref.download_state, ref.download_pct, ref.error = "Active", "Ready", "DOWNLOADED", 100, None
        ref.size = t.size = res["size"]
        ref.physical_size = t.physical_size = res.get("physical_size")
        text, level = f"{tr.object_type} {t.name} uploaded to its image store", "INFO"
    else:
        t.state = outcome
        ref.state, ref.error = "Failed", error
        ref.download_state = "ABANDONED" if outcome == "UploadAbandoned" else "UPLOAD_ERROR"
        text, level = f"Upload of {tr.object_type.lower()} {t.name} failed: {error}", "ERROR"
    events.record(s, ctx, "TEMPLATE.UPLOAD" if tr.object_type == "Template" else "ISO.UPLOAD", text, level=level,
                  resource_type="Template", resource_uuid=t.uuid)
    return True
