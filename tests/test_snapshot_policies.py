"""Snapshot policies and the scheduler: the API rules, schedules over DST changes and time zones (a fake clock drives
the scheduler, nothing sleeps), each slot fired once by two schedulers racing on one SQLite file or PostgreSQL,
and, with a real `volstack agent` and real images, retention and the inactive-volume rule."""
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from agentproc import wait_until
from support import add_datacenter, client
from test_templates import add_store, cloud, error_of  # noqa: F401  (cloud is a fixture)
from volstack.api.commands.snapshot_policies import recurring_submitter
from volstack.db.engine import Database
from volstack.db.models import AsyncJob, Event
from volstack.db.snapshot_models import Snapshot, SnapshotPolicy, SnapshotSchedule
from volstack.errors import InvalidParameter
from volstack.services.snapshot_policies import DAILY, HOURLY, MONTHLY, WEEKLY, next_run, reschedule
from volstack.services.snapshot_scheduler import SnapshotScheduler


class Clock:
    """The scheduler's injectable clock: naive UTC, moved by the test."""

    def __init__(self, t: datetime):
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def _series(interval, schedule, tz, start, n):
    out, t = [], start
    for _ in range(n):
        t = next_run(interval, schedule, tz, t)
        out.append(t)
    return out


def _utc(*a):
    return datetime(*a)


# ---------------------------------------------------------------- schedules (pure)

def test_schedules_follow_the_policy_time_zone_across_dst_changes():
    ny = "America/New_York"
    # DST starts 2027-03-14: 02:30 does not exist that day and runs at 03:30 EDT (still 07:30 UTC)
    assert _series(DAILY, "30:02", ny, _utc(2027, 3, 12), 4) == [
        _utc(2027, 3, 12, 7, 30), _utc(2027, 3, 13, 7, 30), _utc(2027, 3, 14, 7, 30), _utc(2027, 3, 15, 6, 30)]
    # DST ends 2027-11-07: 01:30 exists twice and runs once, at the first (EDT)
    assert _series(DAILY, "30:01", ny, _utc(2027, 11, 6), 3) == [
        _utc(2027, 11, 6, 5, 30), _utc(2027, 11, 7, 5, 30), _utc(2027, 11, 8, 6, 30)]
    # hourly runs every real hour, both 01:30s included
    assert _series(HOURLY, "30", ny, _utc(2027, 11, 7, 3), 5) == [_utc(2027, 11, 7, h, 30) for h in range(3, 8)]
    # half-hour offsets, and a zone whose DST shift is 30 minutes (Lord Howe, 2027-04-04 02:00 → 01:30)
    assert _series(HOURLY, "00", "Asia/Kolkata", _utc(2027, 1, 1), 2) == [_utc(2027, 1, 1, 0, 30),
                                                                           _utc(2027, 1, 1, 1, 30)]
    assert _series(HOURLY, "15", "Australia/Lord_Howe", _utc(2027, 4, 3, 13), 4) == [
        _utc(2027, 4, 3, 13, 15), _utc(2027, 4, 3, 14, 15), _utc(2027, 4, 3, 15, 45), _utc(2027, 4, 3, 16, 45)]
    # weekly: D = 1 is Sunday; Zurich's DST starts on Sunday 2027-03-28
    assert _series(WEEKLY, "00:09:1", "Europe/Zurich", _utc(2027, 3, 17), 3) == [
        _utc(2027, 3, 21, 8), _utc(2027, 3, 28, 7), _utc(2027, 4, 4, 7)]
    # monthly in the southern hemisphere: Sydney's DST starts 2027-10-03 02:00, so 02:30 on the 3rd runs at 03:30
    assert _series(MONTHLY, "30:02:3", "Australia/Sydney", _utc(2027, 8, 20), 3) == [
        _utc(2027, 9, 2, 16, 30), _utc(2027, 10, 2, 16, 30), _utc(2027, 11, 2, 15, 30)]
    # Java time zone ids CloudStack accepts: custom offsets and three-letter ids
    assert next_run(DAILY, "00:00", "GMT+05:30", _utc(2027, 1, 1)) == _utc(2027, 1, 1, 18, 30)
    assert next_run(DAILY, "00:00", "PST", _utc(2027, 1, 1)) == _utc(2027, 1, 1, 8)
    assert next_run(DAILY, "00:00", "US/Eastern", _utc(2027, 1, 1)) == _utc(2027, 1, 1, 5)


@pytest.mark.parametrize("interval, schedule, tz, expect", [
    (DAILY, "61:1", "UTC", "minute 61 is not 0-59; the format is MM:HH"),
    (DAILY, "1", "UTC", "expected 2 numbers separated by ':'"),
    (HOURLY, "5:10", "UTC", "the format is MM (minute 0-59)"),
    (WEEKLY, "00:10:8", "UTC", "day of week 8 is not 1-7 (1 = Sunday)"),
    (MONTHLY, "00:10:29", "UTC", "day of month 29 is not 1-28"),
    (MONTHLY, "a:b:c", "UTC", "MM:HH:DD"),
    (DAILY, "00:24", "UTC", "hour 24 is not 0-23"),
    (DAILY, "00:01", "Mars/Olympus", "Unknown time zone 'Mars/Olympus'"),
    (DAILY, "00:01", "europe/zurich", "did you mean Europe/Zurich?"),
    (DAILY, "00:01", "../etc/passwd", "use a tz database name"),
])
def test_bad_schedules_and_time_zones_say_what_to_send(interval, schedule, tz, expect):
    with pytest.raises(InvalidParameter) as e:
        next_run(interval, schedule, tz, _utc(2027, 1, 1))
    assert expect in e.value.text


# ---------------------------------------------------------------- a Simulator zone

def _sim_dc(ms, store=True):
    api = client(ms)
    dc = add_datacenter(api, "pz", "pp", "pc", ["http://simp"])
    zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
    api.createStoragePool(name="pool", url="nfs://10.0.0.1/pool", zoneid=zone["id"], podid=pod["id"],
                          clusterid=cl["id"])
    if store:
        api.addImageStore(name="images", provider="NFS", url="nfs://10.0.0.2/images", zoneid=zone["id"])
    so = api.createServiceOffering(name="small", cpunumber=1, cpuspeed=500, memory=256,
                                   displaytext="small")["serviceoffering"]
    do = api.createDiskOffering(name="d1", disksize=1, displaytext="d1")["diskoffering"]
    vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"], rootdisksize=1,
                                  name="pvm")["virtualmachine"]
    root = api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    return dict(api=api, zone=zone, vm=vm, root=root, do=do, ms=ms)


@pytest.fixture
def sim(server):
    return _sim_dc(server)


def _policy(api, volume, interval="DAILY", schedule="30:02", tz="UTC", maxsnaps=3, **kw):
    return api.createSnapshotPolicy(volumeid=volume["id"], intervaltype=interval, schedule=schedule, timezone=tz,
                                    maxsnaps=maxsnaps, **kw)["snapshotpolicy"]


def test_policy_commands_follow_cloudstack(sim):
    api, root = sim["api"], sim["root"]
    daily = _policy(api, root, "daily", "00:1", "Europe/Zurich", 3)
    assert {k: daily[k] for k in ("volumeid", "volumename", "schedule", "intervaltype", "maxsnaps", "timezone",
                                  "fordisplay")} == \
        dict(volumeid=root["id"], volumename=root["name"], schedule="00:1", intervaltype=1, maxsnaps=3,
             timezone="Europe/Zurich", fordisplay=True)
    # a second policy of the same interval updates the first; another interval is a second policy
    again = _policy(api, root, "DAILY", "30:02", "UTC", 5)
    assert again["id"] == daily["id"]
    assert (again["schedule"], again["timezone"], again["maxsnaps"]) == ("30:02", "UTC", 5)
    hourly = _policy(api, root, "HOURLY", "15", "UTC", 2)
    listed = api.listSnapshotPolicies(volumeid=root["id"])
    assert listed["count"] == 2 and [p["intervaltype"] for p in listed["snapshotpolicy"]] == [1, 0]
    assert api.listSnapshotPolicies(id=hourly["id"])["snapshotpolicy"][0]["schedule"] == "15"

    # bad input: 431 with what to change
    for kw, text in [(dict(maxsnaps=9), "exceeds the limit of 8 for interval type DAILY (snapshot.max.daily)"),
                     (dict(maxsnaps=0), "must be at least 1"),
                     (dict(schedule="00:25"), "hour 25 is not 0-23"),
                     (dict(tz="Nowhere/Land"), "Unknown time zone"),
                     (dict(interval="yearly"), "use HOURLY, DAILY, WEEKLY or MONTHLY"),
                     (dict(zoneids=sim["zone"]["id"]), "not supported yet")]:
        code, msg = error_of(lambda: _policy(api, root, **{"interval": "DAILY", **kw}))
        assert code == 431 and text in msg, (kw, msg)
    api.updateConfiguration(name="snapshot.max.weekly", value="0")
    code, msg = error_of(lambda: _policy(api, root, "WEEKLY", "00:01:1", maxsnaps=1))
    assert code == 431 and "WEEKLY snapshot policies are disabled (snapshot.max.weekly=0)" in msg
    vol = api.createVolume(name="lazy", zoneid=sim["zone"]["id"], diskofferingid=sim["do"]["id"])["volume"]
    code, msg = error_of(lambda: _policy(api, vol))
    assert code == 431 and "Allocated" in msg and "attach it to a VM" in msg
    assert api.listSnapshotPolicies(volumeid=root["id"])["count"] == 2        # nothing left behind

    # fordisplay=false hides the policy and stops its schedule; customid renames it (root admin)
    new_id = "0f6c1e9e-8a3b-4d1e-9a51-6d1f4f0c2a77"
    upd = api.updateSnapshotPolicy(id=hourly["id"], fordisplay=False, customid=new_id)["snapshotpolicy"]
    assert (upd["id"], upd["fordisplay"]) == (new_id, False)
    assert [p["id"] for p in api.listSnapshotPolicies()["snapshotpolicy"]] == [daily["id"]]
    assert api.listSnapshotPolicies(fordisplay=False)["snapshotpolicy"][0]["id"] == new_id
    with sim["ms"].db.session() as s:
        assert s.scalar(select(SnapshotPolicy.next_at).where(SnapshotPolicy.uuid == new_id)) is None
        assert s.scalar(select(SnapshotPolicy.next_at).where(SnapshotPolicy.uuid == daily["id"])) is not None

    # another tenant neither sees nor deletes them
    acc = api.createAccount(username="bob", password="pw-bob", accounttype=0)["account"]
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    bob = client(sim["ms"], keys["apikey"], keys["secretkey"])
    assert bob.listSnapshotPolicies() == {} and bob.listSnapshotPolicies(listall=True) == {}
    code, _ = error_of(lambda: bob.deleteSnapshotPolicies(id=daily["id"]))
    assert code == 531
    code, _ = error_of(lambda: bob.createSnapshotPolicy(volumeid=root["id"], intervaltype="DAILY", schedule="00:01",
                                                         timezone="UTC", maxsnaps=1))
    assert code == 531

    code, msg = error_of(lambda: api.deleteSnapshotPolicies())
    assert code == 431 and "id" in msg
    assert api.deleteSnapshotPolicies(ids=f"{daily['id']},{new_id}")["success"] is True
    assert api.listSnapshotPolicies(fordisplay=False) == {} and api.listSnapshotPolicies() == {}
    assert {e["type"] for e in api.listEvents()["event"]} >= {"SNAPSHOTPOLICY.CREATE", "SNAPSHOTPOLICY.UPDATE",
                                                              "SNAPSHOTPOLICY.DELETE"}


def test_a_user_policy_stays_within_the_account_snapshot_limit(sim):
    api = sim["api"]
    acc = api.createAccount(username="ann", password="pw-ann", accounttype=0)["account"]
    keys = api.registerUserKeys(id=acc["user"][0]["id"])["userkeys"]
    ann = client(sim["ms"], keys["apikey"], keys["secretkey"])
    vol = ann.createVolume(name="annvol", zoneid=sim["zone"]["id"], diskofferingid=sim["do"]["id"])["volume"]
    vm = ann.deployVirtualMachine(zoneid=sim["zone"]["id"], serviceofferingid=sim["vm"]["serviceofferingid"],
                                  rootdisksize=1)["virtualmachine"]
    vol = ann.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    api.updateResourceLimit(account="ann", domainid=acc["domainid"], resourcetype=3, max=2)    # 3 = snapshot
    code, msg = error_of(lambda: _policy(ann, vol, maxsnaps=3))
    assert code == 431 and "snapshot limit of account ann (2)" in msg
    assert _policy(ann, vol, maxsnaps=2)["maxsnaps"] == 2
    assert ann.listSnapshotPolicies()["count"] == 1
    # a policy hidden by an admin (fordisplay=false) is not listed to its regular user, even when asked for
    hidden = api.updateSnapshotPolicy(id=ann.listSnapshotPolicies()["snapshotpolicy"][0]["id"], fordisplay=False)
    assert ann.listSnapshotPolicies() == {} and ann.listSnapshotPolicies(fordisplay=False) == {}
    assert api.listSnapshotPolicies(volumeid=vol["id"], fordisplay=False)["count"] == 1
    api.updateSnapshotPolicy(id=hidden["snapshotpolicy"]["id"], fordisplay=True)
    # an admin finds the policies of a user's volume by volumeid without listall (Ansible asks so)
    assert api.listSnapshotPolicies() == {} and api.listSnapshotPolicies(volumeid=vol["id"])["count"] == 1
    code, _ = error_of(lambda: ann.listSnapshotPolicies(volumeid=sim["root"]["id"]))
    assert code == 531


def test_expunging_a_volume_deletes_its_policies(sim):
    api = sim["api"]
    vol = api.createVolume(name="gone", zoneid=sim["zone"]["id"], diskofferingid=sim["do"]["id"])["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=sim["vm"]["id"])["volume"]
    _policy(api, vol)
    _policy(api, sim["root"])
    api.detachVolume(id=vol["id"])
    api.deleteVolume(id=vol["id"])
    with sim["ms"].db.session() as s:
        assert s.scalar(select(func.count()).select_from(SnapshotPolicy)) == 1
    assert api.listSnapshotPolicies()["snapshotpolicy"][0]["volumeid"] == sim["root"]["id"]


# ---------------------------------------------------------------- the scheduler on a fake clock

class Recorder:
    """A submit that records what the scheduler queued (no job runs)."""

    def __init__(self):
        self.fired, self.lock = [], threading.Lock()

    def __call__(self, s, ctx, snap, policy):
        with self.lock:
            self.fired.append((policy.uuid, snap.uuid))
        return None


def _rebase(ms, clock):
    """Policies made through the API were scheduled from the real time: schedule them from the fake one."""
    with ms.db.session() as s:
        for policy in s.scalars(select(SnapshotPolicy)):
            reschedule(policy, clock())


def _slots(ms, policy_uuid):
    with ms.db.session() as s:
        pid = s.scalar(select(SnapshotPolicy.id).where(SnapshotPolicy.uuid == policy_uuid))
        return [r.scheduled_at for r in s.scalars(select(SnapshotSchedule).where(SnapshotSchedule.policy_id == pid)
                                                  .order_by(SnapshotSchedule.scheduled_at))]


def test_scheduler_fires_each_slot_once_over_dst_changes(sim):
    api, ms = sim["api"], sim["ms"]
    daily = _policy(api, sim["root"], "DAILY", "30:02", "America/New_York", 8)
    hourly = _policy(api, sim["root"], "HOURLY", "30", "America/New_York", 8)
    clock, rec = Clock(_utc(2027, 3, 12)), Recorder()
    _rebase(ms, clock)
    sched = SnapshotScheduler(ms.db, rec, clock)
    fired_at = {}
    while clock.t < _utc(2027, 3, 16):        # a poll every 10 minutes (snapshot.poll.interval)
        before = len(rec.fired)
        sched.run_due()
        for policy_uuid, _ in rec.fired[before:]:
            fired_at.setdefault(policy_uuid, []).append(clock.t)
        clock.t += timedelta(minutes=10)
    assert fired_at[daily["id"]] == [_utc(2027, 3, d, 7, 30) for d in (12, 13, 14)] + [_utc(2027, 3, 15, 6, 30)]
    assert _slots(ms, daily["id"]) == fired_at[daily["id"]]
    # every real hour, the hour the clocks skip included: 01:30 EST is followed by 03:30 EDT
    assert fired_at[hourly["id"]] == [_utc(2027, 3, 12, 0, 30) + timedelta(hours=h) for h in range(96)]
    snaps = api.listSnapshots(volumeid=sim["root"]["id"])["snapshot"]
    assert {s["snapshottype"] for s in snaps} == {"DAILY", "HOURLY"} and len(snaps) == len(rec.fired)
    assert api.listSnapshots(intervaltype="DAILY")["count"] == 4
    assert api.listSnapshots(snapshottype="RECURRING")["count"] == len(rec.fired)
    assert api.listSnapshots(snapshottype="MANUAL") == {}


def test_slots_missed_while_no_server_ran_fire_once(sim):
    api, ms = sim["api"], sim["ms"]
    hourly = _policy(api, sim["root"], "HOURLY", "00", "UTC", 8)
    clock, rec = Clock(_utc(2027, 6, 1, 9, 30)), Recorder()
    _rebase(ms, clock)
    sched = SnapshotScheduler(ms.db, rec, clock)
    clock.t = _utc(2027, 6, 1, 15, 10)           # five slots (10:00 … 14:00) and a bit passed unserved
    assert sched.run_due() == 1 and sched.run_due() == 0
    assert _slots(ms, hourly["id"]) == [_utc(2027, 6, 1, 10)]
    with ms.db.session() as s:
        assert s.scalar(select(SnapshotPolicy.next_at)) == _utc(2027, 6, 1, 16)
    clock.t = _utc(2027, 6, 1, 16, 0)
    assert sched.run_due() == 1 and _slots(ms, hourly["id"])[-1] == _utc(2027, 6, 1, 16)
    # a volume that cannot be snapshotted now: the slot is passed with a warning, not retried forever
    with ms.db.session() as s:
        from volstack.db.storage_models import Volume
        s.scalar(select(Volume).where(Volume.uuid == sim["root"]["id"])).state = "Migrating"
    clock.t = _utc(2027, 6, 1, 17, 0)
    assert sched.run_due() == 0 and sched.run_due() == 0
    with ms.db.session() as s:
        last = s.scalar(select(SnapshotSchedule).order_by(SnapshotSchedule.id.desc()).limit(1))
        assert last.snapshot_id is None and "Migrating" in last.skipped
        assert s.scalar(select(Event).where(Event.level == "WARN", Event.description.contains("skipped")))
        s.scalar(select(Volume).where(Volume.uuid == sim["root"]["id"])).state = "Destroy"
    clock.t = _utc(2027, 6, 1, 18, 0)
    assert sched.run_due() == 0
    with ms.db.session() as s:
        last = s.scalar(select(SnapshotSchedule).order_by(SnapshotSchedule.id.desc()).limit(1))
        assert last.scheduled_at == clock.t and "destroyed" in last.skipped


def _race(db_url, clock, steps, start):
    """Two schedulers (each with its own engine, as two management servers) poll one database at the same moments."""
    recs = [Recorder(), Recorder()]
    dbs = [Database(db_url) for _ in recs]
    scheds = [SnapshotScheduler(db, rec, clock) for db, rec in zip(dbs, recs)]
    begin, done = threading.Barrier(3), threading.Barrier(3)
    errors = []

    def worker(sched):
        try:
            for _ in range(steps):
                begin.wait(timeout=60)
                sched.run_due()
                done.wait(timeout=60)
        except Exception as exc:      # noqa: BLE001 (reported by the test)
            errors.append(exc)
            begin.abort()
            done.abort()
    threads = [threading.Thread(target=worker, args=(sc,)) for sc in scheds]
    for t in threads:
        t.start()
    for i in range(steps):
        clock.t = start + timedelta(hours=i, minutes=1)
        begin.wait(timeout=60)
        done.wait(timeout=60)
    for t in threads:
        t.join(timeout=60)
    for db in dbs:
        db.dispose()
    assert not errors, errors
    return recs


def test_two_schedulers_on_one_database_fire_each_slot_once(server_any_db, db_url):
    ms = server_any_db
    dc = _sim_dc(ms)
    policies = [_policy(dc["api"], dc["root"], "HOURLY", "00", "Europe/Zurich", 8),
                _policy(dc["api"], dc["root"], "DAILY", "00:03", "Asia/Tokyo", 8)]
    start = _utc(2027, 10, 30, 12)               # over Zurich's DST end (2027-10-31 03:00 → 02:00)
    clock = Clock(start - timedelta(minutes=1))
    _rebase(ms, clock)
    recs = _race(db_url, clock, 32, start)
    fired = recs[0].fired + recs[1].fired
    assert len(fired) == len(set(fired)) == 32 + 2, [len(r.fired) for r in recs]
    assert _slots(ms, policies[0]["id"]) == [start + timedelta(hours=i) for i in range(32)]
    assert _slots(ms, policies[1]["id"]) == [_utc(2027, 10, 30, 18), _utc(2027, 10, 31, 18)]
    with ms.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Snapshot)) == 34


# ---------------------------------------------------------------- real snapshots: retention, inactive volumes

def _settle(ms, deadline=120):
    """Wait until every queued job (snapshot jobs, retention tasks) has finished."""
    def idle():
        with ms.db.session(readonly=True) as s:
            return not s.scalar(select(func.count()).select_from(AsyncJob).where(AsyncJob.status == 0))
    wait_until("the snapshot jobs to finish", idle, timeout=deadline)


@pytest.mark.slow
def test_retention_and_inactive_volumes_with_real_snapshots(cloud):
    api, ms, tmp = cloud["api"], cloud["server"], cloud["tmp"]
    add_store(cloud)
    vm = api.deployVirtualMachine(zoneid=cloud["zone"]["id"], serviceofferingid=cloud["so"]["id"],
                                  rootdisksize=1)["virtualmachine"]
    offering = api.createDiskOffering(name="d1", disksize=1, displaytext="d1")["diskoffering"]
    vol = api.createVolume(name="data", zoneid=cloud["zone"]["id"], diskofferingid=offering["id"])["volume"]
    vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    manual = api.createSnapshot(volumeid=vol["id"], name="manual")["snapshot"]
    policy = _policy(api, vol, "HOURLY", "00", "UTC", 2)
    clock = Clock(_utc(2027, 1, 1, 0, 30))
    _rebase(ms, clock)
    sched = SnapshotScheduler(ms.db, recurring_submitter(ms.jobs), clock)

    def slot():
        clock.t += timedelta(hours=1)
        n = sched.run_due()
        ms.jobs.wake()
        _settle(ms)
        return n

    def recurring():
        return [s["name"] for s in api.listSnapshots(volumeid=vol["id"], snapshottype="RECURRING").get("snapshot", [])]

    # an attached volume of a running VM: every slot; retention keeps the newest two recurring ones
    taken = []
    for _ in range(3):
        assert slot() == 1
        taken.append(recurring()[-1])
    assert recurring() == taken[1:]
    assert api.listSnapshots(id=manual["id"])["snapshot"][0]["state"] == "BackedUp"
    stored = {p.name for p in (tmp / "store").iterdir()}
    assert f"{manual['id']}.qcow2" in stored and len(stored) == 3
    snap = api.listSnapshots(volumeid=vol["id"], intervaltype="HOURLY")["snapshot"][-1]
    assert (snap["state"], snap["snapshottype"], snap["intervaltype"]) == ("BackedUp", "HOURLY", "HOURLY")

    # the VM stops: one more snapshot (taken after it stopped), then none while nothing can change
    api.stopVirtualMachine(id=vm["id"])
    assert slot() == 1
    assert slot() == 0
    skipped = [e["description"] for e in api.listEvents(type="SNAPSHOT.CREATE")["event"]
               if "skipped" in e["description"]]
    assert skipped and "volume is inactive" in skipped[0]
    assert api.createSnapshot(volumeid=vol["id"], name="manual-while-stopped")["snapshot"]["state"] == "BackedUp"
    # running again: taken; detached from the running VM: one more, then skipped
    api.startVirtualMachine(id=vm["id"])
    assert slot() == 1
    api.detachVolume(id=vol["id"])
    assert slot() == 1
    assert slot() == 0
    assert len(recurring()) == 2
    names = [s["name"] for s in api.listSnapshots(volumeid=vol["id"], snapshottype="MANUAL")["snapshot"]]
    assert names == ["manual", "manual-while-stopped"]          # retention never takes manual snapshots

    # deleting the policy keeps its snapshots
    api.deleteSnapshotPolicies(id=policy["id"])
    assert len(recurring()) == 2 and slot() == 0
