"""The snapshot scheduler: a periodic task of every management server that fires due policy slots, and the
retention that runs after each recurring snapshot.

Exactly once, with any number of servers on one database: a slot is claimed by one conditional UPDATE that moves
the policy's `next_at` from that slot to the next one after now (the engine's claim pattern); the claim, the
`snapshot_schedule` row (unique per policy and slot), the snapshot row and its job commit in one transaction, so a
server that dies before committing leaves the slot to the next poll. Slots missed while no server ran are fired
once: the claim jumps straight past now.

Inactive volumes (detached, or their VM not running) are skipped when a snapshot was already taken since they
became inactive (`SnapshotPolicy.inactive_since`, stamped by snapshot_policies' hooks); the first slot after they
became inactive always takes one. Manual snapshots are never skipped nor deleted by retention.
"""
import logging
from datetime import datetime
from typing import Callable

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from volstack.db.models import Account, Domain, utcnow
from volstack.db.snapshot_models import Snapshot, SnapshotPolicy, SnapshotSchedule
from volstack.db.storage_models import Volume
from volstack.errors import CloudError
from volstack.services import events, snapshots
from volstack.services.context import CallContext, system_context
from volstack.services.snapshot_policies import INTERVALS, next_run, writing

log = logging.getLogger("volstack.snapshots")
KEPT = ("BackedUp", "CreatedOnPrimary")          # recurring snapshots retention counts (and may delete)


def owner_context(s, vol: Volume) -> CallContext:
    """The volume owner's account, acted for by the system user: jobs and events are the owner's, as in CloudStack."""
    acc, sysctx = s.get(Account, vol.account_id), system_context()
    return CallContext(user_id=sysctx.user_id, account_id=acc.id, domain_id=acc.domain_id,
                       domain_path=s.get(Domain, acc.domain_id).path, account_type=acc.account_type,
                       account_name=acc.name)


class SnapshotScheduler:
    """submit(s, ctx, snapshot, policy) -> job uuid queues the createSnapshot job of a recurring snapshot (and its
    retention) in the caller's transaction. clock() -> naive UTC now; tests pass their own."""

    def __init__(self, db, submit: Callable, clock: Callable[[], datetime] = utcnow):
        self.db, self.submit, self.clock = db, submit, clock

    def run_due(self) -> int:
        """Fire every slot that is due; returns how many snapshots were queued by this server."""
        now = self.clock()
        with self.db.session(readonly=True) as s:
            due = s.execute(select(SnapshotPolicy.id, SnapshotPolicy.next_at)
                            .where(SnapshotPolicy.next_at <= now).order_by(SnapshotPolicy.next_at)).all()
        queued = 0
        for policy_id, slot in due:
            try:
                with self.db.session() as s:
                    queued += self._fire(s, policy_id, slot, now)
            except IntegrityError:
                pass                # the slot's schedule row exists: it was fired already
            except Exception:
                log.exception("firing snapshot policy %s for %s failed", policy_id, slot)
        return queued

    def _fire(self, s, policy_id: int, slot: datetime, now: datetime) -> int:
        policy = s.get(SnapshotPolicy, policy_id)
        if policy is None:
            return 0
        claimed = s.execute(update(SnapshotPolicy)
                            .where(SnapshotPolicy.id == policy_id, SnapshotPolicy.next_at == slot)
                            .values(next_at=next_run(policy.interval, policy.schedule, policy.timezone, now))
                            .execution_options(synchronize_session=False)).rowcount
        if claimed != 1:
            return 0                # another server fired it, or the policy changed since we looked
        # fired slots are kept only while they link a recurring snapshot that exists (retention counts those)
        s.execute(delete(SnapshotSchedule).where(
            SnapshotSchedule.policy_id == policy_id, SnapshotSchedule.scheduled_at < slot,
            or_(SnapshotSchedule.snapshot_id.is_(None),
                SnapshotSchedule.snapshot_id.in_(select(Snapshot.id).where(
                    or_(Snapshot.removed.isnot(None), Snapshot.state.in_(("Destroyed", "Error"))))))))
        row = SnapshotSchedule(policy_id=policy_id, volume_id=policy.volume_id, scheduled_at=slot, fired_at=now)
        s.add(row)
        s.flush()
        vol = s.get(Volume, policy.volume_id)
        ctx = owner_context(s, vol)
        label = f"{INTERVALS[policy.interval]} snapshot of volume {vol.name} scheduled for {slot:%Y-%m-%d %H:%M} UTC"
        row.skipped = self._inactive(s, policy, vol)
        level = "INFO"
        if row.skipped is None:
            try:
                with s.begin_nested():
                    snap = snapshots.create(s, ctx, volumeid=vol.uuid, policyid=policy.uuid)
            except CloudError as exc:
                row.skipped, level = exc.text, "WARN"
            else:
                row.snapshot_id, row.job_uuid = snap.id, self.submit(s, ctx, snap, policy)
                return 1
        events.record(s, ctx, "SNAPSHOT.CREATE", f"{label} skipped: {row.skipped}", level=level,
                      resource_type="Volume", resource_uuid=vol.uuid)
        return 0

    @staticmethod
    def _inactive(s, policy: SnapshotPolicy, vol: Volume) -> str | None:
        """Why an inactive volume needs no snapshot now, or None."""
        if vol.state == "Destroy":
            return "volume is inactive: it is destroyed (its policies go when it is expunged)"
        if vol.removed is not None or writing(s, vol):
            return None
        since = policy.inactive_since or policy.created
        taken = s.scalar(select(Snapshot.name).where(Snapshot.volume_id == vol.id, Snapshot.removed.is_(None),
                                                     Snapshot.state.notin_(("Error", "Destroyed")),
                                                     Snapshot.created >= since)
                         .order_by(Snapshot.created.desc()).limit(1))
        if taken is None:
            return None
        return (f"volume is inactive (detached, or its VM not running) since {since:%Y-%m-%d %H:%M:%S} UTC and "
                f"snapshot {taken} was taken after that")


def apply_retention(s, ctx, policy_uuid: str) -> list[str]:
    """Delete the oldest recurring snapshots of the policy beyond its maxsnaps; returns the names deleted."""
    policy = s.scalar(select(SnapshotPolicy).where(SnapshotPolicy.uuid == policy_uuid))
    if policy is None:
        return []                  # deleted meanwhile: its snapshots are kept
    kept = list(s.scalars(select(Snapshot).join(SnapshotSchedule, SnapshotSchedule.snapshot_id == Snapshot.id)
                          .where(SnapshotSchedule.policy_id == policy.id, Snapshot.removed.is_(None),
                                 Snapshot.state.in_(KEPT))
                          .order_by(Snapshot.created.desc(), Snapshot.id.desc())))
    deleted = []
    for snap in kept[policy.max_snaps:]:
        try:
            snapshots.delete(s, ctx, snap)
            deleted.append(snap.name)
        except CloudError as exc:       # refused before changing anything, or its failure is recorded
            events.record(s, ctx, "SNAPSHOT.DELETE", f"Retention of the {INTERVALS[policy.interval]} policy could not "
                          f"delete snapshot {snap.name} (the next recurring snapshot retries): {exc.text}",
                          level="WARN", resource_type="Snapshot", resource_uuid=snap.uuid)
    return deleted
