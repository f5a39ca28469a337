"""Acceptance of issue 14: two management servers on one PostgreSQL with Simulator hosts take mixed volume
traffic at both; one is killed with SIGKILL; the other finishes or settles every job it owned. Every job ends
exactly once (one outcome, and one attach event per attaching job that succeeded) and every volume ends in a
stable state."""
import os
import signal
import subprocess
import threading

import pytest
from sqlalchemy import func, select

from agentproc import wait_until
from support import add_datacenter, client
from test_cli import VOLSTACK, _read_until, _stop

STABLE = {"Allocated", "Ready", "Destroy", "Expunged"}


class _Ms:
    """Enough of a ManagementServer for the test helpers: an endpoint and the admin's keys."""

    def __init__(self, endpoint, db):
        from volstack.db.models import User
        from volstack.services.accounts import user_secret
        with db.session() as s:
            admin = s.get(User, 2)
            self.admin, self.admin_secret = admin, user_secret(admin)
        self.endpoint = endpoint


@pytest.mark.slow
def test_two_servers_share_volume_traffic_and_one_killed_loses_nothing(postgres, tmp_path):
    from volstack import crypto
    from volstack.db.engine import Database
    from volstack.db.models import AsyncJob, Event
    from volstack.db.storage_models import Volume
    url, key = postgres.createdb("two_kill"), tmp_path / "shared.key"
    procs = [subprocess.Popen([VOLSTACK, "serve", "--db", url, "--key-file", str(key), "--port", "0", "--name", name,
                               "--heartbeat-seconds", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
             for name in ("msA", "msB")]
    try:
        endpoints = [_read_until(p, lambda ls: any("management server" in l for l in ls))[-1].split(" on ")[1]
                     for p in procs]
        crypto.load_key(key)
        db = Database(url)
        servers = [_Ms(e, db) for e in endpoints]
        api = client(servers[1])
        dc = add_datacenter(api, "kz", "kp", "kc", ["http://simk1", "http://simk2"])
        api.createStoragePool(name="shared", url="nfs://10.0.0.7/shared", **dc["at"], capacitybytes=10 ** 6 * 2 ** 30)
        do = api.createDiskOffering(name="d", disksize=1)["diskoffering"]
        so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=256, displaytext="s")["serviceoffering"]
        vms = [api.deployVirtualMachine(zoneid=dc["zone"]["id"], serviceofferingid=so["id"], rootdisksize=1)
               ["virtualmachine"]["id"] for _ in range(2)]
        stop, errors, submitted = threading.Event(), [], []

        def traffic(ms, n):
            raw = client(ms, fetch_result=False)
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = raw.createVolume(name=f"{n}-{i}", zoneid=dc["zone"]["id"], diskofferingid=do["id"],
                                         **({"virtualmachineid": vms[i % 4 // 2]} if i % 2 else {}))
                    submitted.append(r["jobid"])
                    if i % 3 == 0:                # a detach (async) or a delete of a volume still being made
                        call = raw.detachVolume if i % 2 else raw.deleteVolume
                        jobid = call(id=r["id"]).get("jobid")
                        if jobid:
                            submitted.append(jobid)
                except Exception as exc:          # the killed server refuses connections: that is expected
                    errors.append((n, exc))
                    if ms is servers[0] and procs[0].poll() is not None:
                        return
        threads = [threading.Thread(target=traffic, args=(servers[i % 2], f"t{i}"), daemon=True) for i in range(6)]
        for t in threads:
            t.start()
        wait_until("jobs running on both servers", lambda: len(submitted) > 40, timeout=60)
        os.kill(procs[0].pid, signal.SIGKILL)     # msA dies mid-traffic
        procs[0].wait(timeout=10)
        after_kill = len(submitted)                # msB keeps taking traffic while msA is dead
        wait_until("jobs submitted to msB after msA died", lambda: len(submitted) >= after_kill + 6, timeout=60)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        wait_until("every job to end", lambda: db_pending(db) == 0, timeout=90)
        with db.session() as s:
            jobs = list(s.scalars(select(AsyncJob)))
            assert jobs and all(j.status in (1, 2) and not j.running for j in jobs)
            owners = {j.owner_msid for j in jobs}
            assert len(owners) >= 2, "both servers ran jobs"
            interrupted = [j for j in jobs if j.status == 2 and "interrupted" in (j.result or {}).get("errortext", "")]
            # other failures are refusals of racing requests (a detach before its attach...), never internal errors
            internal = [(j.cmd, j.result) for j in jobs if j.status == 2 and j not in interrupted
                        and j.result_code == 530]
            assert not internal, internal
            states = dict(s.execute(select(Volume.state, func.count()).group_by(Volume.state)).all())
            assert set(states) <= STABLE, states
            # exactly once: one VOLUME.ATTACH event for each createVolume job that attached and succeeded
            attaching = {j.instance_uuid for j in jobs if j.cmd == "createVolume" and j.status == 1
                         and (j.params or {}).get("virtualmachineid")}
            events = s.execute(select(Event.resource_uuid, func.count()).where(Event.event_type == "VOLUME.ATTACH")
                               .group_by(Event.resource_uuid)).all()
            assert all(n == 1 for _, n in events), [e for e in events if e[1] != 1]
            assert attaching <= {uuid for uuid, _ in events}
        db.dispose()
    finally:
        for p in procs:
            if p.poll() is None:
                _stop(p)


def db_pending(db):
    from volstack.db.models import AsyncJob
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(AsyncJob).where(AsyncJob.status == 0))
