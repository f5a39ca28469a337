"""Recurring snapshot policies: createSnapshotPolicy / updateSnapshotPolicy / listSnapshotPolicies /
deleteSnapshotPolicies, their schedules in the policy's time zone, and what the scheduler needs to know about a
volume's activity (services/snapshot_scheduler.py fires the slots).

Schedules are CloudStack's (DateUtil.getNextRunTime): HOURLY `MM`, DAILY `MM:HH`, WEEKLY `MM:HH:D` (D = 1–7,
1 = Sunday), MONTHLY `MM:HH:DD` (DD = 1–28), in the policy's time zone. A local time that does not exist (the hour
skipped when DST starts) runs at the same clock time after the jump (02:30 → 03:30); one that exists twice (the
hour repeated when DST ends) runs once, at its first occurrence. HOURLY runs every real hour, twice in a repeated
hour.
"""
import re
import uuid
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from volstack.db.models import Account, utcnow
from volstack.db.snapshot_models import SnapshotPolicy, SnapshotSchedule
from volstack.db.storage_models import VirtualMachine, Volume
from volstack.errors import InvalidParameter, ResourceInUse
from volstack.services import encryption, events, limits, lookup, volumes
from volstack.services import settings as S
from volstack.services.context import ROOT_ADMIN, check_access, owner_filter
from volstack.services.lifecycle import VM
from volstack.services.listing import ListQuery, paginate

lookup.register_entity("SnapshotPolicy", SnapshotPolicy)

INTERVALS = ("HOURLY", "DAILY", "WEEKLY", "MONTHLY")        # the index is the policy's `interval` (API intervaltype)
HOURLY, DAILY, WEEKLY, MONTHLY = range(4)
MAX_SNAPS = {HOURLY: S.SNAPSHOT_MAX_HOURLY, DAILY: S.SNAPSHOT_MAX_DAILY, WEEKLY: S.SNAPSHOT_MAX_WEEKLY,
             MONTHLY: S.SNAPSHOT_MAX_MONTHLY}
FORMATS = {HOURLY: "MM (minute 0-59), e.g. 30", DAILY: "MM:HH (minute, hour 0-23), e.g. 30:02",
           WEEKLY: "MM:HH:D (minute, hour, day of week 1-7 with 1 = Sunday), e.g. 30:02:1",
           MONTHLY: "MM:HH:DD (minute, hour, day of month 1-28), e.g. 30:02:15"}
# Guests write to a volume only while its VM runs (a migrating VM still runs).
WRITING_VM_STATES = ("Running", "Migrating")

# java.util.TimeZone's three-letter ids (ZoneId.SHORT_IDS) that CloudStack accepts and the tz database lacks.
JAVA_SHORT_IDS = {
    "ACT": "Australia/Darwin", "AET": "Australia/Sydney", "AGT": "America/Argentina/Buenos_Aires",
    "ART": "Africa/Cairo", "AST": "America/Anchorage", "BET": "America/Sao_Paulo", "BST": "Asia/Dhaka",
    "CAT": "Africa/Harare", "CNT": "America/St_Johns", "CST": "America/Chicago", "CTT": "Asia/Shanghai",
    "EAT": "Africa/Addis_Ababa", "ECT": "Europe/Paris", "IET": "America/Indiana/Indianapolis", "IST": "Asia/Kolkata",
    "JST": "Asia/Tokyo", "MIT": "Pacific/Apia", "NET": "Asia/Yerevan", "NST": "Pacific/Auckland",
    "PLT": "Asia/Karachi", "PNT": "America/Phoenix", "PRT": "America/Puerto_Rico", "PST": "America/Los_Angeles",
    "SST": "Pacific/Guadalcanal", "VST": "Asia/Ho_Chi_Minh",
}
_GMT_OFFSET = re.compile(r"^GMT([+-])(\d{1,2})(?::?(\d{2}))?$")     # Java's custom ids: GMT+5:30, GMT-0800
_SCHEDULE_PART = re.compile(r"^\d{1,2}$")


# ---------------------------------------------------------------- schedules and time zones

def parse_interval(text: str) -> int:
    name = (text or "").strip().upper()
    if name not in INTERVALS:
        raise InvalidParameter(f"Unsupported interval type {text!r}: use HOURLY, DAILY, WEEKLY or MONTHLY")
    return INTERVALS.index(name)


def parse_schedule(interval: int, text: str) -> tuple[int, int, int]:
    """(minute, hour, day) of a schedule string; 431 naming the expected format when it does not fit."""
    parts = (text or "").strip().split(":")
    want = {HOURLY: 1, DAILY: 2, WEEKLY: 3, MONTHLY: 3}[interval]

    def bad(why: str) -> InvalidParameter:
        return InvalidParameter(f"Invalid schedule {text!r} for interval type {INTERVALS[interval]}: {why}; the "
                                f"format is {FORMATS[interval]}")
    if len(parts) != want or not all(_SCHEDULE_PART.match(p) for p in parts):
        raise bad(f"expected {want} number{'s' if want > 1 else ''} separated by ':'")
    minute, hour, day = (int(p) for p in parts + ["0"] * (3 - len(parts)))
    if minute > 59:
        raise bad(f"minute {minute} is not 0-59")
    if hour > 23:
        raise bad(f"hour {hour} is not 0-23")
    if interval == WEEKLY and not 1 <= day <= 7:
        raise bad(f"day of week {day} is not 1-7 (1 = Sunday)")
    if interval == MONTHLY and not 1 <= day <= 28:
        raise bad(f"day of month {day} is not 1-28 (a day every month has)")
    return minute, hour, day


def zone_of(name: str) -> tzinfo:
    """A tz database name (Europe/Zurich, US/Eastern, UTC, Etc/GMT+5…), a Java short id (PST, IST…) or a Java
    custom offset (GMT+05:30); 431 otherwise, suggesting the right spelling when only the case is wrong."""
    name = (name or "").strip()
    m = _GMT_OFFSET.match(name)
    if m and int(m.group(2)) <= 23 and int(m.group(3) or 0) <= 59:
        offset = timedelta(hours=int(m.group(2)), minutes=int(m.group(3) or 0))
        return timezone(-offset if m.group(1) == "-" else offset)
    try:
        if name and ".." not in name and not name.startswith("/"):
            return ZoneInfo(JAVA_SHORT_IDS.get(name, name))
    except (ZoneInfoNotFoundError, ValueError):
        pass
    close = [z for z in available_timezones() if z.lower() == name.lower()]
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise InvalidParameter(f"Unknown time zone {name!r}{hint}: use a tz database name such as Europe/Zurich, "
                           "America/New_York or UTC, or an offset such as GMT+05:30")


def _utc(local: datetime, tz: tzinfo) -> datetime:
    """Naive UTC of a local wall-clock time; fold=0 puts a skipped time after the jump and a repeated one first."""
    return local.replace(tzinfo=tz, fold=0).astimezone(timezone.utc).replace(tzinfo=None)


def next_run(interval: int, schedule: str, tz_name: str, after: datetime) -> datetime:
    """The first slot of the schedule strictly after `after` (naive UTC), as naive UTC."""
    minute, hour, day = parse_schedule(interval, schedule)
    tz = zone_of(tz_name)
    if interval == HOURLY:
        # Every whole minute whose local minute is MM: stepping real minutes keeps hours that DST repeats or
        # skips right, and offsets of half or quarter hours too.
        t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(24 * 60):
            if t.replace(tzinfo=timezone.utc).astimezone(tz).minute == minute:
                return t
            t += timedelta(minutes=1)
        raise AssertionError("no hourly slot within a day")
    start = after.replace(tzinfo=timezone.utc).astimezone(tz).date() - timedelta(days=1)
    for n in range(64):                      # a month and a bit covers every monthly slot
        d: date = start + timedelta(days=n)
        if interval == WEEKLY and d.isoweekday() % 7 + 1 != day:        # Java's DAY_OF_WEEK: 1 = Sunday
            continue
        if interval == MONTHLY and d.day != day:
            continue
        slot = _utc(datetime(d.year, d.month, d.day, hour, minute), tz)
        if slot > after:
            return slot
    raise AssertionError("no slot within 64 days")


def reschedule(policy: SnapshotPolicy, now: datetime) -> None:
    """The policy's next slot after now; none while it is hidden (fordisplay=false: CloudStack does not schedule)."""
    policy.next_at = next_run(policy.interval, policy.schedule, policy.timezone, now) if policy.display else None


# ---------------------------------------------------------------- the commands

def get_policy(s, ctx, policy_id: str) -> SnapshotPolicy:
    policy = s.scalar(select(SnapshotPolicy).where(SnapshotPolicy.uuid == policy_id))
    if policy is None:
        raise InvalidParameter(f"Unable to find snapshot policy by id {policy_id}")
    check_access(s, ctx, s.get(Volume, policy.volume_id).account_id, "snapshot policy")
    return policy


def _check_maxsnaps(s, vol: Volume, interval: int, maxsnaps: int) -> None:
    key = MAX_SNAPS[interval]
    limit = S.Settings.value_in(s, key)
    if limit <= 0:
        raise InvalidParameter(f"{INTERVALS[interval]} snapshot policies are disabled ({key.name}=0); pick another "
                               "interval type or ask an administrator to raise the setting")
    if maxsnaps <= 0:
        raise InvalidParameter(f"maxsnaps {maxsnaps} must be at least 1 (the number of recurring snapshots to keep)")
    if maxsnaps > limit:
        raise InvalidParameter(f"maxsnaps {maxsnaps} for volume {vol.name} exceeds the limit of {limit} for interval "
                               f"type {INTERVALS[interval]} ({key.name}); use {limit} or less")
    owner = s.get(Account, vol.account_id)
    acc_limit = limits.limit_of(s, owner.id, "snapshot")
    if owner.account_type != ROOT_ADMIN and 0 <= acc_limit < maxsnaps:
        raise InvalidParameter(f"maxsnaps {maxsnaps} exceeds the snapshot limit of account {owner.name} ({acc_limit}): "
                               f"keep at most {acc_limit}, or ask an administrator to raise the account's limit")


def writing(s, vol: Volume) -> bool:
    """Is a guest writing the volume now (attached to a running VM)?"""
    vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
    return vm is not None and vm.state in WRITING_VM_STATES


def create_policy(s, ctx, *, volumeid, intervaltype, schedule, timezone, maxsnaps, fordisplay=None, zoneids=None,
                  storageids=None, usestoragereplication=False, now=None) -> SnapshotPolicy:
    """createSnapshotPolicy; a second policy for the same volume and interval updates that one, as in CloudStack."""
    now = now or utcnow()
    if usestoragereplication:
        raise InvalidParameter("usestoragereplication=true is not supported: volstack drives no storage-side "
                               "replication of snapshots; omit it")
    vol = volumes.get_volume(s, ctx, volumeid)
    encryption.refuse_policy(vol)
    if zoneids or storageids:
        raise InvalidParameter("Copying recurring snapshots to other zones or storage pools (zoneids, storageids) is "
                               "not supported yet; omit them")
    if vol.state != "Ready":
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}, not Ready: "
                               + ("attach it to a VM (or start its VM) first so it exists on primary storage"
                                  if vol.state == "Allocated" else "snapshot policies are set on Ready volumes"))
    interval = parse_interval(intervaltype)
    next_run(interval, schedule, timezone, now)          # validates schedule and time zone with their own texts
    _check_maxsnaps(s, vol, interval, maxsnaps)
    display = True if fordisplay is None else fordisplay
    policy = s.scalar(select(SnapshotPolicy).where(SnapshotPolicy.volume_id == vol.id,
                                                   SnapshotPolicy.interval == interval))
    created = policy is None
    if created:
        policy = SnapshotPolicy(volume_id=vol.id, interval=interval, created=now,
                                inactive_since=None if writing(s, vol) else now)
        s.add(policy)
    moved = created or (policy.schedule, policy.timezone, policy.display) != (schedule, timezone, display)
    policy.schedule, policy.timezone, policy.max_snaps, policy.display = schedule, timezone, maxsnaps, display
    if moved:                            # an unchanged schedule keeps a slot that is due but not fired yet
        reschedule(policy, now)
    try:
        s.flush()
    except IntegrityError:
        raise ResourceInUse(f"A {INTERVALS[interval]} snapshot policy for volume {vol.name} was created at the same "
                            "time; retry to update it") from None
    events.record(s, ctx, "SNAPSHOTPOLICY.CREATE" if created else "SNAPSHOTPOLICY.UPDATE",
                  f"{INTERVALS[interval]} snapshot policy of volume {vol.name} {'created' if created else 'updated'}: "
                  f"{schedule} {timezone}, keep {maxsnaps}", resource_type="SnapshotPolicy", resource_uuid=policy.uuid)
    return policy


def update_policy(s, ctx, policy: SnapshotPolicy, *, customid=None, fordisplay=None, now=None) -> SnapshotPolicy:
    """updateSnapshotPolicy: the id (customid) and whether the policy is shown and scheduled (fordisplay)."""
    if customid:
        try:
            uuid.UUID(customid)
        except ValueError:
            raise InvalidParameter(f"customid {customid!r} is not a uuid") from None
        if customid != policy.uuid and lookup.exists(s, "SnapshotPolicy", customid):
            raise InvalidParameter(f"Another snapshot policy already has the id {customid}")
        policy.uuid = customid
    if fordisplay is not None and fordisplay != policy.display:
        policy.display = fordisplay
        reschedule(policy, now or utcnow())
    events.record(s, ctx, "SNAPSHOTPOLICY.UPDATE", f"Snapshot policy {policy.uuid} updated",
                  resource_type="SnapshotPolicy", resource_uuid=policy.uuid)
    return policy


def list_policies(s, ctx, q: ListQuery, *, id=None, volumeid=None, fordisplay=None):
    """A volume's (or one) policy when the caller may see that volume, as in CloudStack, so an admin managing a
    user's volume (Ansible passes volumeid only) finds them without listall; else the caller's own."""
    stmt = (select(SnapshotPolicy).join(Volume, Volume.id == SnapshotPolicy.volume_id)
            .where(Volume.removed.is_(None)).order_by(SnapshotPolicy.id))
    if volumeid:
        stmt = stmt.where(Volume.id == volumes.get_volume(s, ctx, volumeid).id)
    if id:
        stmt = stmt.where(SnapshotPolicy.id == get_policy(s, ctx, id).id)
    if not (id or volumeid):
        stmt = stmt.where(*owner_filter(s, ctx, Volume, listall=q.listall, isrecursive=q.isrecursive,
                                        account=q.account, domain_uuid=q.domainid))
    # CloudStack lists displayed policies unless the root admin asks for the hidden ones
    hidden = fordisplay is False and ctx.is_root_admin
    stmt = stmt.where(SnapshotPolicy.display.is_(not hidden))
    return paginate(s, stmt, q)


def delete_policies(s, ctx, ids: list[str]) -> None:
    """deleteSnapshotPolicies: the policies go, the snapshots they took stay (as recurring snapshots)."""
    if not ids:
        raise InvalidParameter("Pass the policy to delete as id, or several as ids")
    for policy in [get_policy(s, ctx, policy_id) for policy_id in dict.fromkeys(ids)]:
        vol = s.get(Volume, policy.volume_id)
        _remove(s, policy)
        events.record(s, ctx, "SNAPSHOTPOLICY.DELETE", f"{INTERVALS[policy.interval]} snapshot policy of volume "
                      f"{vol.name} deleted; its snapshots are kept", resource_type="SnapshotPolicy",
                      resource_uuid=policy.uuid)


def _remove(s, policy: SnapshotPolicy) -> None:
    s.execute(delete(SnapshotSchedule).where(SnapshotSchedule.policy_id == policy.id))
    s.delete(policy)
    s.flush()


def recurring_type(s, ctx, policyid: str, vol: Volume) -> str:
    """createSnapshot policyid=: the snapshot type is the policy's interval (HOURLY…), as in CloudStack."""
    policy = get_policy(s, ctx, policyid)
    if policy.volume_id != vol.id:
        raise InvalidParameter(f"Snapshot policy {policyid} belongs to another volume than {vol.name}")
    return INTERVALS[policy.interval]


# ---------------------------------------------------------------- hooks: volume expunge, volume activity

def _volume_expunged(s, vol: Volume) -> None:
    for policy in s.scalars(select(SnapshotPolicy).where(SnapshotPolicy.volume_id == vol.id)):
        _remove(s, policy)


def _stamp_inactive(s, volume_ids) -> None:
    s.execute(update(SnapshotPolicy).where(SnapshotPolicy.volume_id.in_(volume_ids))
              .values(inactive_since=utcnow()).execution_options(synchronize_session=False))


def _vm_changed(s, vm: VirtualMachine, before: str, after: str) -> None:
    """A VM that stops running stops writing its volumes: the scheduler takes one more snapshot of each."""
    if after not in WRITING_VM_STATES and before in WRITING_VM_STATES + ("Stopping",):
        _stamp_inactive(s, select(Volume.id).where(Volume.vm_id == vm.id))


def _detached(s, vol: Volume, vm: VirtualMachine) -> None:
    if vm.state in WRITING_VM_STATES:
        _stamp_inactive(s, [vol.id])


volumes.expunge_hooks.append(_volume_expunged)
volumes.detach_hooks.append(_detached)
VM.observers.append(_vm_changed)
