"""Snapshot policy commands: createSnapshotPolicy, updateSnapshotPolicy, listSnapshotPolicies,
deleteSnapshotPolicies; and how the scheduler queues a recurring snapshot (createSnapshot + retention)."""
from volstack.api.commands.common import list_query, lst, obj
from volstack.api.registry import (API, BOOLEAN, INTEGER, LIST, MAP, OWNER_LIST_PARAMS, STRING, USER, UUID, Field as F,
                                   Param as P, Success, View)
from volstack.api.views import _a, tags_field
from volstack.db import storage_models as sm
from volstack.services import snapshot_policies as policies
from volstack.services import snapshot_scheduler, snapshots, tags

SNAPSHOT_POLICY = View("snapshotpolicy", [
    F("id", "the ID of the snapshot policy", _a("uuid")),
    F("volumeid", "the ID of the disk volume", lambda r, lk: lk.attr(sm.Volume, r.volume_id, "uuid")),
    F("volumename", "the name of the disk volume", lambda r, lk: lk.attr(sm.Volume, r.volume_id, "name")),
    F("schedule", "time the snapshot is scheduled to be taken.", _a("schedule")),
    F("intervaltype", "the interval type of the snapshot policy: 0 HOURLY, 1 DAILY, 2 WEEKLY, 3 MONTHLY",
      _a("interval"), "short"),
    F("maxsnaps", "maximum number of snapshots retained", _a("max_snaps"), "int"),
    F("timezone", "the time zone of the snapshot policy", _a("timezone")),
    F("fordisplay", "is this policy for display to the regular user", _a("display"), "boolean"),
    F("zone", "The list of zones in which snapshot backup is scheduled", lambda r, lk: [], "set"),
    F("storage", "The list of pools in which snapshot backup is scheduled", lambda r, lk: [], "set"),
    tags_field("SnapshotPolicy"),
])


@API.command("createSnapshotPolicy", "Creates a snapshot policy for the account: recurring snapshots of a volume on "
             "an hourly, daily, weekly or monthly schedule. A second policy of the same interval type for the same "
             "volume updates the first.", [
    P("volumeid", UUID, "the ID of the disk volume", required=True, entity="Volume"),
    P("intervaltype", STRING, "valid values are HOURLY, DAILY, WEEKLY, and MONTHLY", required=True),
    P("schedule", STRING, "time the snapshot is scheduled to be taken. Format is: * if HOURLY, MM * if DAILY, MM:HH * "
      "if WEEKLY, MM:HH:DD (1-7, 1 = Sunday) * if MONTHLY, MM:HH:DD (1-28)", required=True),
    P("timezone", STRING, "Specifies a timezone for this command: a tz database name such as Europe/Zurich (or a "
      "Java time zone id such as PST or GMT+05:30)", required=True),
    P("maxsnaps", INTEGER, "maximum number of snapshots to retain (at most snapshot.max.<interval>)", required=True),
    P("fordisplay", BOOLEAN, "an optional field, whether to the display the policy to the end user or not; a policy "
      "not displayed takes no snapshots"),
    P("zoneids", LIST, "A list of IDs of the zones in which the snapshot will be made available (not supported yet)",
      entity="Zone"),
    P("storageids", LIST, "A list of IDs of the storage pools in which the snapshot will be made available (not "
      "supported yet)", entity="StoragePool"),
    P("usestoragereplication", BOOLEAN, "use the storage's own replication for zoneids: refused (volstack drives "
      "no storage replication)"),
    P("tags", MAP, "Map of tags (key/value pairs) of the policy: tags[0].key=k&tags[0].value=v"),
], view=SNAPSHOT_POLICY, access=USER)
def create_snapshot_policy(req, p):
    policy = policies.create_policy(
        req.s, req.ctx, volumeid=p.volumeid, intervaltype=p.intervaltype, schedule=p.schedule, timezone=p.timezone,
        maxsnaps=p.maxsnaps, fordisplay=p.fordisplay, zoneids=p.zoneids, storageids=p.storageids,
        usestoragereplication=bool(p.usestoragereplication))
    tags.set_tags(req.s, "SnapshotPolicy", policy, p.tags)
    return obj(req, SNAPSHOT_POLICY, policy)


@API.command("updateSnapshotPolicy", "Updates the snapshot policy: its id (customid) and whether it is displayed "
             "(and scheduled).", [
    P("id", UUID, "the ID of the snapshot policy", entity="SnapshotPolicy"),
    P("customid", STRING, "an optional field, in case you want to set a custom id to the resource. Allowed to Root "
      "Admins only"),
    P("fordisplay", BOOLEAN, "an optional field, whether to the display the snapshot policy to the end user or not."),
], view=SNAPSHOT_POLICY, is_async=True, access=USER, instance_type="SnapshotPolicy", instance_param="id",
   on_interrupt="retry")
def update_snapshot_policy(req, p):
    from volstack.services.context import require_root_admin
    if p.customid:
        require_root_admin(req.ctx)
    if not p.id:                    # optional in CloudStack's declaration too, which then refuses it the same way
        from volstack.errors import InvalidParameter
        raise InvalidParameter("Invalid policy id was given: pass id, the snapshot policy to update")
    policy = policies.get_policy(req.s, req.ctx, p.id)
    return obj(req, SNAPSHOT_POLICY, policies.update_policy(req.s, req.ctx, policy, customid=p.customid,
                                                     fordisplay=p.fordisplay))


@API.command("listSnapshotPolicies", "Lists snapshot policies.", [
    P("id", UUID, "the ID of the snapshot policy", entity="SnapshotPolicy"),
    P("volumeid", UUID, "the ID of the disk volume", entity="Volume"),
    P("fordisplay", BOOLEAN, "list resources by display flag; only ROOT admin is eligible to pass this parameter"),
    *OWNER_LIST_PARAMS,
], view=SNAPSHOT_POLICY, is_list=True, access=USER)
def list_snapshot_policies(req, p):
    return lst(req, SNAPSHOT_POLICY, policies.list_policies(req.s, req.ctx, list_query(req, p), id=p.id,
                                                            volumeid=p.volumeid, fordisplay=p.fordisplay))


@API.command("deleteSnapshotPolicies", "Deletes snapshot policies for the account; the snapshots they took are kept.", [
    P("id", UUID, "the Id of the snapshot policy", entity="SnapshotPolicy"),
    P("ids", LIST, "list of snapshots policy IDs separated by comma", entity="SnapshotPolicy"),
], response_key="success", access=USER)
def delete_snapshot_policies(req, p):
    policies.delete_policies(req.s, req.ctx, ([p.id] if p.id else []) + (p.ids or []))
    return Success()


@API.task("snapshotRetention", instance_type="Snapshot", on_interrupt="retry")
def snapshot_retention(req, p):
    return {"deleted": snapshot_scheduler.apply_retention(req.s, req.ctx, p["policy"])}


def recurring_submitter(jobs):
    """The scheduler's submit: the createSnapshot job of the recurring snapshot (the keys of a manual one: after the
    volume's other jobs, in a snapshot slot of its host), then its policy's retention as a task with the same sync
    key, so it runs once the snapshot job has finished."""
    def submit(s, ctx, snap, policy) -> str:
        key, queue = snapshots.job_keys(s, snap.uuid, throttled=True)
        job = jobs.submit(s, cmd="createSnapshot", params={"id": snap.uuid, "policyid": policy.uuid}, ctx=ctx,
                          instance_type="Snapshot", instance_uuid=snap.uuid, sync_key=key, queue_key=queue)
        jobs.submit(s, cmd="snapshotRetention", params={"policy": policy.uuid}, ctx=ctx, instance_type="Snapshot",
                    instance_uuid=snap.uuid, sync_key=key)
        return job.uuid
    return submit
