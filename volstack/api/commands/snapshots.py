"""Volume snapshot commands: createSnapshot, listSnapshots, deleteSnapshot, revertSnapshot."""
import dataclasses

from volstack.api.commands.common import list_query, lst, obj, paged
from volstack.api.commands.volumes import _owner_fields
from volstack.api.registry import (API, BOOLEAN, LIST, MAP, OWNER_LIST_PARAMS, ROOT, STRING, USER, UUID, Field as F,
                                   Param as P, Success, View)
from volstack.api.server import start_task
from volstack.api.views import _a, _date, _ref, tags_field
from volstack.db import models as m
from volstack.db import storage_models as sm
from volstack.db.image_models import ImageStore
from volstack.db.snapshot_models import Snapshot
from volstack.errors import InvalidParameter
from volstack.services import infra, snapshots, tags


def _vol(name):
    return lambda r, lk: lk.attr(sm.Volume, r.volume_id, name)


def _on_store(r, lk) -> bool:
    return r.store_id is not None and r.install_path is not None and r.state in ("BackedUp", "Copying", "Destroying")


def _datastore(r, lk, attr):
    if isinstance(r, _PrimaryCopy):
        return lk.attr(sm.StoragePool, r.pool_id, attr)
    return lk.attr(ImageStore, r.store_id, attr) if _on_store(r, lk) else None


class _PrimaryCopy:
    """listSnapshots showunique=false: the copy a backed-up snapshot keeps on primary storage, listed as its own
    entry (locationtype PRIMARY, datastore = the pool) next to the image-store one, as CloudStack lists one entry
    per data store."""
    store_id = None

    def __init__(self, snap):
        self._snap = snap

    def __getattr__(self, name):
        return getattr(self._snap, name)


def _copies(r):
    return [r, _PrimaryCopy(r)] if r.store_id is not None and r.primary_name and r.pool_id else [r]


def _chain_size(r, lk) -> int | None:
    """Bytes on the store of an incremental snapshot and every backup it reads (CloudStack's chainsize)."""
    if r.parent_id is None:
        return None
    total, row = 0, r
    while row is not None:
        total += row.physical_size or 0
        row = lk.get(Snapshot, row.parent_id) if row.parent_id else None
    return total


SNAPSHOT = View("snapshot", [
    F("id", "ID of the snapshot", _a("uuid")),
    F("name", "name of the snapshot", _a("name")),
    F("state", "the state of the snapshot. BackedUp means that snapshot is ready to be used; Creating - the snapshot "
      "is being allocated on the primary storage; BackingUp - the snapshot is being backed up on secondary storage",
      _a("state")),
    F("snapshottype", "the type of the snapshot", _a("snapshot_type")),
    F("intervaltype", "valid types are hourly, daily, weekly, monthy, template, and none.", _a("snapshot_type")),
    F("locationtype", "valid location types are primary and secondary.",
      lambda r, lk: "SECONDARY" if _on_store(r, lk) else ("PRIMARY" if r.primary_name else None)),
    F("volumeid", "ID of the disk volume", _vol("uuid")),
    F("volumename", "name of the disk volume", _vol("name")),
    F("volumetype", "type of the disk volume", _a("volume_type")),
    F("volumestate", "state of the disk volume",
      lambda r, lk: "Expunged" if lk.attr(sm.Volume, r.volume_id, "removed") else lk.attr(sm.Volume, r.volume_id, "state")),
    F("virtualsize", "virtual size of backedup snapshot on image store", _a("size"), "long"),
    F("physicalsize", "physical size of backedup snapshot on image store", _a("physical_size"), "long"),
    F("revertable", "indicates whether the underlying storage supports reverting the volume to this snapshot",
      lambda r, lk: r.state == "BackedUp" and lk.attr(sm.Volume, r.volume_id, "removed") is None, "boolean"),
    F("hypervisor", "the hypervisor of the snapshot", _a("hypervisor")),
    F("zoneid", "id of the availability zone", _ref(m.Zone, "zone_id")),
    F("zonename", "name of the availability zone", _ref(m.Zone, "zone_id", "name")),
    F("datastoreid", "id of the image store holding the backup, or of the primary pool for a copy on primary",
      lambda r, lk: _datastore(r, lk, "uuid"), access=ROOT),
    F("datastorename", "name of the image store holding the backup, or of the primary pool for a copy on primary",
      lambda r, lk: _datastore(r, lk, "name"), access=ROOT),
    F("datastoretype", "type of the datastore holding the snapshot",
      lambda r, lk: "Image" if _on_store(r, lk) else ("Primary" if r.primary_name else None), access=ROOT),
    F("parent", "the ID of the snapshot this incremental one is based on",
      lambda r, lk: lk.attr(Snapshot, r.parent_id, "uuid") if r.parent_id else None),
    F("parentname", "the name of the snapshot this incremental one is based on",
      lambda r, lk: lk.attr(Snapshot, r.parent_id, "name") if r.parent_id else None),
    F("chainsize", "chain size of snapshot including all parent snapshots. Shown only for incremental snapshots",
      _chain_size, "long"),
    F("status", "why the last operation on the snapshot failed", _a("error")),
    F("created", "the date the snapshot was created", _date("created"), "date"),
    *_owner_fields(),
    tags_field("Snapshot"),
])

SNAP_JOB = dict(is_async=True, access=USER, instance_type="Snapshot", instance_param="id",
                sync=lambda req, p, uuid: snapshots.job_keys(req.s, uuid))


@API.command("createSnapshot", "Creates an instant snapshot of a volume: taken on primary storage (live, disk only, "
             "for a running VM), then backed up to an image store of the zone.", [
    P("volumeid", UUID, "The ID of the disk volume", required=True, entity="Volume"),
    P("name", STRING, "the name of the snapshot"),
    P("policyid", UUID, "policy id of the snapshot, if this is null, then use MANUAL_POLICY."),
    P("asyncbackup", BOOLEAN, "asynchronous backup if true: the job ends once the snapshot is on primary storage "
      "(CreatedOnPrimary) and the backup to the image store goes on in the background"),
    P("locationtype", STRING, "Valid location types: 'primary' (kept on primary storage only, never backed up), "
      "'secondary' (backed up to an image store). Default: snapshot.backup.to.secondary"),
    P("quiescevm", BOOLEAN, "quiesce vm if true: refused (needs the QEMU guest agent, which volstack does not drive)"),
    P("zoneids", LIST, "A comma-separated list of IDs of the zones in which the snapshot will be made available "
      "(not supported yet)", entity="Zone"),
    P("tags", MAP, "Map of tags (key/value pairs) of the snapshot: tags[0].key=k&tags[0].value=v"),
    P("account", STRING, "The account of the snapshot. The account parameter must be used with the domainId parameter."),
    P("domainid", UUID, "The domain ID of the snapshot. If used with the account parameter, it specifies the domain "
      "the account is in.", entity="Domain"),
], view=SNAPSHOT, **{**SNAP_JOB, "sync": lambda req, p, uuid: snapshots.job_keys(req.s, uuid, throttled=True)},
   prepare=lambda req, p: _create_row(req, p).uuid)
def create_snapshot(req, p):
    snap = snapshots.get_snapshot(req.s, req.ctx, p.id)
    start = (lambda: req.start_task("snapshotBackup", {"snapshot": snap.uuid}, snap.uuid,
                                    *snapshots.job_keys(req.s, snap.uuid, throttled=True))) if p.asyncbackup else None
    return obj(req, SNAPSHOT, snapshots.take(req.s, req.ctx, snap, req.progress, start))


@API.task("snapshotBackup", instance_type="Snapshot")
def snapshot_backup(req, p):
    """asyncbackup's backup, or a retry of a failed one (retry=true); both take a snapshot slot of the host."""
    snap = snapshots.backup_task(req.s, req.ctx, p["snapshot"], req.progress, retry=bool(p.get("retry")))
    return {"snapshot": snap.uuid, "state": snap.state}


def backup_retry_submitter(jobs):
    """snapshot_backups.submit_due's submit: the retry as a snapshotBackup task with the snapshot job keys."""
    def submit(s, ctx, snap):
        return start_task(jobs, s, ctx, "snapshotBackup", {"snapshot": snap.uuid, "retry": True}, snap.uuid,
                          *snapshots.job_keys(s, snap.uuid, throttled=True))
    return submit


def _volume_owner_only(req, p) -> None:
    """A volume snapshot belongs to the volume's account; account/domainid naming another would be ignored."""
    if not (p.account or p.domainid):
        return
    from volstack.services import accounts, volumes
    acc = req.s.get(m.Account, volumes.get_volume(req.s, req.ctx, p.volumeid).account_id)
    dom = accounts.get_domain(req.s, req.ctx, p.domainid) if p.domainid else None
    if (p.account and p.account != acc.name) or (dom is not None and dom.id != acc.domain_id):
        raise InvalidParameter(f"A volume snapshot belongs to the volume's owner (account {acc.name}): account/domainid "
                               "naming another account are not supported; omit them")


def _create_row(req, p):
    _volume_owner_only(req, p)
    if p.zoneids:
        raise InvalidParameter("Copying snapshots to other zones (zoneids) is not supported yet")
    snap = snapshots.create(req.s, req.ctx, volumeid=p.volumeid, name=p.name, policyid=p.policyid,
                            locationtype=p.locationtype, quiescevm=bool(p.quiescevm))
    tags.set_tags(req.s, "Snapshot", snap, p.tags)
    return snap


_FILTERS = ("id", "ids", "name", "volumeid", "zoneid", "snapshottype", "intervaltype", "storageid", "imagestoreid",
            "locationtype", "tags")


@API.command("listSnapshots", "Lists all available snapshots for the account.", [
    P("id", UUID, "lists snapshot by snapshot ID", entity="Snapshot"),
    P("ids", LIST, "the IDs of the snapshots, mutually exclusive with id", entity="Snapshot"),
    P("name", STRING, "lists snapshot by snapshot name"),
    P("volumeid", UUID, "the ID of the disk volume", entity="Volume"),
    P("zoneid", UUID, "list snapshots by zone id", entity="Zone"),
    P("snapshottype", STRING, "valid values are MANUAL or RECURRING."),
    P("intervaltype", STRING, "valid values are HOURLY, DAILY, WEEKLY, and MONTHLY."),
    P("storageid", UUID, "list snapshots by the primary storage pool still holding them", entity="StoragePool", access=ROOT),
    P("imagestoreid", UUID, "list snapshots by the image store holding their backup", entity="ImageStore", access=ROOT),
    P("locationtype", STRING, "list snapshots by location: PRIMARY or SECONDARY"),
    P("showunique", BOOLEAN, "true (default): one entry per snapshot; false: one entry per data store holding it "
      "(a backed-up snapshot still kept on primary storage is listed twice, locationtype SECONDARY and PRIMARY)"),
    P("tags", MAP, "List resources by tags (key/value pairs): tags[0].key=k&tags[0].value=v; any pair matches"),
    *OWNER_LIST_PARAMS,
], view=SNAPSHOT, is_list=True, access=USER)
def list_snapshots(req, p):
    q, f = list_query(req, p), {k: p.get(k) for k in _FILTERS}
    if p.showunique is not False:
        return lst(req, SNAPSHOT, snapshots.list_snapshots(req.s, req.ctx, q, **f))
    rows, _ = snapshots.list_snapshots(req.s, req.ctx, dataclasses.replace(q, page=None, pagesize=-1), **f)
    return paged(req, p, SNAPSHOT, [c for r in rows for c in _copies(r)])


@API.command("deleteSnapshot", "Deletes a snapshot of a disk volume: its backup on the image store and any copy "
             "left on primary storage.", [
    P("id", UUID, "The ID of the snapshot", required=True, entity="Snapshot"),
    P("zoneid", UUID, "The ID of the zone for the snapshot", entity="Zone"),
], response_key="success", **SNAP_JOB)
def delete_snapshot(req, p):
    snap = snapshots.get_snapshot(req.s, req.ctx, p.id)
    if p.zoneid and infra.get_zone(req.s, p.zoneid).id != snap.zone_id:     # a snapshot lives in one zone only
        raise InvalidParameter(f"Snapshot {snap.name} is not in zone {p.zoneid}: omit zoneid, or pass its own zone")
    snapshots.delete(req.s, req.ctx, snap)
    return Success()


@API.command("revertSnapshot", "Reverts a volume to any of its backed-up snapshots. The volume must be detached or "
             "its VM stopped.", [
    P("id", UUID, "The ID of the snapshot", required=True, entity="Snapshot"),
], view=SNAPSHOT, **SNAP_JOB)
def revert_snapshot(req, p):
    snap = snapshots.get_snapshot(req.s, req.ctx, p.id)
    return obj(req, SNAPSHOT, snapshots.revert(req.s, req.ctx, snap, req.progress))
