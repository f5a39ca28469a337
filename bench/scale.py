"""How list commands and createVolume scale with the number of volumes (issue 14), on SQLite and PostgreSQL.

    .venv/bin/python bench/scale.py                      # 10k and 100k volumes, both databases
    .venv/bin/python bench/scale.py --sizes 10000,1000000 --db sqlite --rounds 5

For each database and size: a management server (in this process, waitress as `volstack serve` runs it) with a
Simulator zone, one NFS pool, 10 user accounts, and N volumes bulk-inserted through the models (70 % Ready on
the pool, 20 % Allocated, 10 % Destroy; every 4th Ready volume attached to one of N/4 VMs; a snapshot for every
10th volume), counts recounted as updateResourceCount does. Every figure is the p50 of signed HTTP requests from
one keep-alive client, next to signed listZones on the same server in the same run (`ratio`), the SQL
statements the request thread ran (BEGIN/COMMIT not counted) and their time, and the server's CPU time for the
same request handled in-process (ApiApp.handle, median of 3: a figure a loaded machine does not distort). createVolume is a user's request (the job's row
and the limit check; the job itself is not waited for). Rows without an external baseline say so.
"""
import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import requests
from sqlalchemy import event, insert, select

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from volstack.api.signing import sign  # noqa: E402
from volstack.db.models import Account, new_uuid, utcnow  # noqa: E402
from volstack.db.snapshot_models import Snapshot  # noqa: E402
from volstack.db.storage_models import DiskOffering, ServiceOffering, StoragePool, VirtualMachine, Volume  # noqa: E402
from volstack.management import ManagementServer  # noqa: E402

GIB = 2 ** 30
USERS = 10


class Client:
    def __init__(self, endpoint, key, secret):
        self.endpoint, self.key, self.secret, self.http = endpoint, key, secret, requests.Session()

    def signed(self, command, **params):
        p = {"command": command, "apiKey": self.key, "response": "json", **{k: str(v) for k, v in params.items()}}
        p["signature"] = sign(p, self.secret)
        return p

    def cpu_ms(self, app, command, **params):
        """The server's CPU for one request, handled in this thread (ApiApp.handle: no HTTP): load-independent."""
        pairs = list(self.signed(command, **params).items())
        t0 = time.thread_time()
        status = app.handle(pairs, {}, "GET")[0]
        assert status.startswith("200"), status
        return (time.thread_time() - t0) * 1000

    def call(self, command, **params):
        p = self.signed(command, **params)
        r = self.http.get(self.endpoint + "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in p.items()), timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"{command} {params}: HTTP {r.status_code} {r.text[:300]}")
        return next(iter(r.json().values()))


class Statements:
    """SQL statements of the server's request threads (waitress workers) and the time spent executing them."""

    def __init__(self, engine):
        self.n, self.seconds = 0, 0.0
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    @staticmethod
    def _ours(statement):
        return threading.current_thread().name.startswith("waitress") and \
            not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))

    def _before(self, conn, cursor, statement, *a):
        if self._ours(statement):
            self.n += 1
            conn.info["scale_t0"] = time.perf_counter()

    def _after(self, conn, cursor, statement, *a):
        t0 = conn.info.pop("scale_t0", None)
        if t0 is not None:
            self.seconds += time.perf_counter() - t0


def seed(ms, admin, n: int) -> dict:
    zone = admin.call("createZone", name="z", networktype="Advanced")["zone"]
    pod = admin.call("createPod", name="p", zoneid=zone["id"])["pod"]
    cl = admin.call("addCluster", clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="Simulator",
                    clustertype="CloudManaged")["cluster"][0]
    admin.call("addHost", zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"], hypervisor="Simulator", url="http://sim1")
    pool = admin.call("createStoragePool", name="nfs", url="nfs://10.0.0.1/p", zoneid=zone["id"], podid=pod["id"],
                      clusterid=cl["id"], capacitybytes=10 ** 9 * GIB)["storagepool"]
    do = admin.call("createDiskOffering", name="d", disksize=1)["diskoffering"]
    so = admin.call("createServiceOffering", name="s", cpunumber=1, cpuspeed=500, memory=256, displaytext="s")["serviceoffering"]
    users = []
    for i in range(USERS):
        acc = admin.call("createAccount", username=f"u{i}", password=f"pw-u{i}", accounttype=0)["account"]
        keys = admin.call("registerUserKeys", id=acc["user"][0]["id"])["userkeys"]
        for rtype in (2, 10):                # the users hold N/10 volumes each: no limit
            admin.call("updateResourceLimit", account=f"u{i}", domainid=acc["domainid"], resourcetype=rtype, max=-1)
        users.append(Client(ms.endpoint, keys["apikey"], keys["secretkey"]))
    with ms.db.session() as s:
        from volstack.db.models import Zone
        zone_id = s.scalar(select(Zone.id).where(Zone.uuid == zone["id"]))
        pool_id = s.scalar(select(StoragePool.id).where(StoragePool.uuid == pool["id"]))
        do_id = s.scalar(select(DiskOffering.id).where(DiskOffering.uuid == do["id"]))
        so_id = s.scalar(select(ServiceOffering.id).where(ServiceOffering.uuid == so["id"]))
        accs = list(s.execute(select(Account.id, Account.domain_id).where(Account.name.like("u%")).order_by(Account.id)))
    now, chunk = utcnow(), 20000
    with ms.db.engine.begin() as conn:
        vms = [dict(uuid=new_uuid(), created=now, name=f"vm-{i}", display_name=f"vm-{i}", state="Running", zone_id=zone_id,
                    service_offering_id=so_id, hypervisor="Simulator", details={}, account_id=accs[i % USERS][0],
                    domain_id=accs[i % USERS][1]) for i in range(n // 16)]
        for i in range(0, len(vms), chunk):
            conn.execute(insert(VirtualMachine), vms[i:i + chunk])
        first_vm = conn.execute(select(VirtualMachine.id).order_by(VirtualMachine.id).limit(1)).scalar()
        for start in range(0, n, chunk):
            rows = []
            for i in range(start, min(n, start + chunk)):
                state = ("Ready",) * 7 + ("Allocated",) * 2 + ("Destroy",)
                st = state[i % 10]
                acc = accs[i % USERS]
                vm = first_vm + (i // 4) % len(vms) if st == "Ready" and i % 4 == 0 and vms else None
                rows.append(dict(uuid=new_uuid(), created=now, name=f"vol-{i}", volume_type="DATADISK", state=st,
                                 size=GIB, format="QCOW2", path=None, zone_id=zone_id,
                                 pool_id=pool_id if st != "Allocated" else None, disk_offering_id=do_id,
                                 vm_id=vm, device_id=1 if vm else None, provisioning_type="thin", details={},
                                 account_id=acc[0], domain_id=acc[1]))
            conn.execute(insert(Volume), rows)
        rows = []
        for vid, acc, dom in conn.execute(select(Volume.id, Volume.account_id, Volume.domain_id).where(Volume.id % 10 == 0)):
            rows.append(dict(uuid=new_uuid(), created=now, name=f"snap-{vid}", volume_id=vid, volume_type="DATADISK",
                             zone_id=zone_id, state="BackedUp", size=GIB, physical_size=GIB // 10, hypervisor="Simulator",
                             account_id=acc, domain_id=dom, snapshot_type="MANUAL", backup_attempts=0))
            if len(rows) == chunk:
                conn.execute(insert(Snapshot), rows)
                rows = []
        if rows:
            conn.execute(insert(Snapshot), rows)
    with ms.db.session() as s:              # what updateResourceCount does, for the bulk-inserted rows
        from volstack.services import limits, pools
        for acc in s.scalars(select(Account)):
            limits.recalculate(s, acc)
        pools.recount_all(s)
    with ms.db.engine.begin() as conn:      # planner statistics, as a server that has run a while has them
        conn.exec_driver_sql("ANALYZE")
    with ms.db.session() as s:
        sample = s.scalar(select(Volume.uuid).where(Volume.name == f"vol-{n // 2}"))
    return dict(zone=zone, do=do, users=users, sample=sample)


def p50(fn, rounds):
    fn()                                     # warm: caches, the first page of a planner
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def measure(ms, admin, world, n, rounds) -> list:
    meter = Statements(ms.db.engine)
    user = world["users"][0]
    deep = max(1, n // 500 // 2)
    rows = [
        ("listZones (baseline)", admin, "listZones", {}),
        ("listVolumes listall pagesize=500", admin, "listVolumes", dict(listall="true", page=1, pagesize=500)),
        (f"listVolumes listall page={deep} (deep)", admin, "listVolumes", dict(listall="true", page=deep, pagesize=500)),
        ("listVolumes keyword=", admin, "listVolumes", dict(listall="true", keyword=f"vol-{n // 3}", page=1, pagesize=500)),
        ("listVolumes id=", admin, "listVolumes", dict(id=world["sample"])),
        ("listVolumes (a user's page)", user, "listVolumes", dict(page=1, pagesize=500)),
        ("listVolumesMetrics listall pagesize=500", admin, "listVolumesMetrics", dict(listall="true", page=1, pagesize=500)),
        ("listSnapshots listall pagesize=500", admin, "listSnapshots", dict(listall="true", page=1, pagesize=500)),
        ("listStoragePools", admin, "listStoragePools", {}),
        ("listVirtualMachines listall pagesize=500", admin, "listVirtualMachines", dict(listall="true", page=1, pagesize=500)),
        ("listAccounts listall", admin, "listAccounts", dict(listall="true")),
    ]
    out = []
    for label, client, cmd, params in rows:
        ms_ = p50(lambda: client.call(cmd, **params), rounds)
        meter.n, meter.seconds = 0, 0.0
        client.call(cmd, **params)
        cpu = statistics.median(client.cpu_ms(ms.api, cmd, **params) for _ in range(3))
        out.append((label, ms_, (meter.n, meter.seconds * 1000, cpu)))
    counter = iter(range(10 ** 9))
    create = lambda: user.call("createVolume", name=f"new-{next(counter)}", zoneid=world["zone"]["id"],  # noqa: E731
                               diskofferingid=world["do"]["id"])
    wall = p50(create, rounds)
    meter.n, meter.seconds = 0, 0.0
    create()
    stm = (meter.n, meter.seconds * 1000)
    cpu = statistics.median(user.cpu_ms(ms.api, "createVolume", name=f"new-{next(counter)}", zoneid=world["zone"]["id"],
                                        diskofferingid=world["do"]["id"]) for _ in range(3))
    out.append(("createVolume (a user's request: row, limit check, job row)", wall, (*stm, cpu)))
    return out


def run(db, n, rounds, tmp):
    url = f"sqlite:///{tmp / f'scale-{n}.db'}" if db == "sqlite" else db
    ms = ManagementServer(url, tmp / "volstack.key", port=0, heartbeat_seconds=5.0).start()
    try:
        admin = Client(ms.endpoint, ms.admin.api_key, ms.admin_secret)
        t0 = time.monotonic()
        world = seed(ms, admin, n)
        seeded = time.monotonic() - t0
        return seeded, measure(ms, admin, world, n, rounds)
    finally:
        ms.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    pg = None
    results = {}
    with tempfile.TemporaryDirectory(prefix="volstack-scale-") as d:
        tmp = Path(d)
        for db in a.db.split(","):
            for n in sizes:
                url = db
                if db == "postgresql":
                    if pg is None:
                        from pgserver import PostgresServer
                        pg = PostgresServer().start()
                    url = pg.createdb(f"scale_{n}_{os.getpid()}")
                seeded, rows = run(db if db == "sqlite" else url, n, a.rounds, tmp)
                results[(db, n)] = rows
                print(f"\n{db}, {n} volumes (seeded in {seeded:.0f} s), p50 of {a.rounds}:")
                base = rows[0][1]
                for label, ms_, stm in rows:
                    ratio = f"{ms_ / base:6.1f}x listZones" if not label.startswith("listZones") else "     (baseline)"
                    st = f"{stm[0]:3d} statements, {stm[1]:6.1f} ms in SQL, {stm[2]:6.1f} ms server CPU" \
                        if stm is not None else "   (no statement count)"
                    print(f"  {label:58s} {ms_:8.1f} ms  {ratio}  {st}")
                sys.stdout.flush()
        if pg is not None:
            pg.stop()
    for db in a.db.split(","):
        if len(sizes) > 1:
            lo, hi = results[(db, sizes[0])], results[(db, sizes[-1])]
            print(f"\n{db}: {sizes[-1]} / {sizes[0]} volumes, ratio of p50 (goal: ≤ 1.5 for every list figure)")
            for (label, a_ms, _), (_, b_ms, _) in zip(lo, hi):
                print(f"  {label:58s} {b_ms / a_ms:6.2f}")


if __name__ == "__main__":
    main()
