"""Storage figures (4-6 in README.md): data-volume create+attach on a real agent, cold migration NFS -> local,
and create+attach pairs on Simulator hosts. Each is measured next to its limit in the same run.

Real parts (figures 4 and 5): one `volstack agent` process (tests/agentproc.py, qemu hypervisor) added as a
KVM host of a real ManagementServer, a guest-less VM (QEMU started paused under KVM, disks on virtio-scsi),
a local (file://) pool, and for figure 5 an NFS pool on the machine's one nfs-ganesha
(tests/nfsserver.py shared_server(); if another run holds it, NfsServerBusy after $VOLSTACK_NFS_WAIT s).
Everything listens on 127.0.0.1; what is started here is stopped here, by the objects that started it.
"""
import json
import math
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

from cs import CloudStack
from sqlalchemy import select

import loadgen
from sqlmeter import SqlMeter
from volstack.agent.client import AgentClient
from volstack.db.models import AsyncJob
from volstack.db.storage_models import StoragePool
from volstack.drivers import driver_for
from volstack.management import ManagementServer

GIB = 2 ** 30
MIB = 2 ** 20
POLL = 0.02                  # how often the client polls queryAsyncJobResult (seconds)
LIST_ZONES = {"command": "listZones"}


def pct(values, p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    v = sorted(values)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


class LockMeter(SqlMeter):
    """SqlMeter that also sums the time spent in SQLite's BEGIN IMMEDIATE: waiting for the write lock."""

    def __init__(self, engine):
        super().__init__(engine)
        self.lock_seconds = 0.0

    def _after(self, conn, cursor, statement, *rest):
        t0 = conn.info.get("bench_t0")
        super()._after(conn, cursor, statement, *rest)
        if t0 is not None and statement.startswith("BEGIN IMMEDIATE"):
            self.lock_seconds += time.perf_counter() - t0


def _ms(seconds: float) -> float:
    return seconds * 1e3


def _client(ms: ManagementServer, poll: float = POLL) -> CloudStack:
    """The cs client as a user runs it: keep-alive session, async calls polled until done every `poll` s."""
    return CloudStack(endpoint=ms.endpoint, key=ms.admin.api_key, secret=ms.admin_secret, poll_interval=poll,
                      fetch_result=True, job_timeout=600, timeout=60)


def _job_times(ms: ManagementServer, keys) -> dict:
    """{(cmd, instance uuid): (queue wait s, execution s, created->completed s)} from the async_job table."""
    keys = set(keys)
    out = {}
    with ms.db.session(readonly=True) as s:
        for j in s.scalars(select(AsyncJob).where(AsyncJob.instance_uuid.in_({k[1] for k in keys}))):
            if (j.cmd, j.instance_uuid) in keys and j.started and j.completed:
                out[(j.cmd, j.instance_uuid)] = ((j.started - j.created).total_seconds(),
                                                 (j.completed - j.started).total_seconds(),
                                                 (j.completed - j.created).total_seconds())
    return out


def _sum_jobs(times: dict, cmds, vol_ids) -> dict:
    """Per volume: the sums over `cmds` of queue wait, execution, created->completed."""
    out = {}
    for v in vol_ids:
        rows = [times[(c, v)] for c in cmds if (c, v) in times]
        if len(rows) == len(cmds):
            out[v] = tuple(sum(r[i] for r in rows) for i in range(3))
    return out


# ====================================================================== figures 4 and 5: a real agent

class RealStorage:
    """A management server with one real agent (KVM host), a local pool and a guest-less VM on it."""

    def __init__(self, tmp: Path, nfs_srv=None):
        from agentproc import AgentProcess   # tests/ is on sys.path (run.py puts it there)
        self.tmp = tmp / "storage"
        self.tmp.mkdir()
        self.agent = self.ms = self.nfs_pseudo = self.vm = None
        self.nfs_srv = nfs_srv
        try:
            self.ms = ManagementServer(f"sqlite:///{self.tmp / 'storage.db'}", tmp / "volstack.key", port=0,
                                       heartbeat_seconds=5.0).start()
            self.agent = AgentProcess(self.tmp / "agent1", name="kvm1").start()
            self._setup()
        except BaseException:
            self.stop()
            raise

    def _setup(self) -> None:
        api = self.api = _client(self.ms)
        self.zone = api.createZone(name="sz", networktype="Advanced")["zone"]
        self.pod = api.createPod(name="sp", zoneid=self.zone["id"])["pod"]
        self.cluster = api.addCluster(clustername="sc", zoneid=self.zone["id"], podid=self.pod["id"], hypervisor="KVM",
                                      clustertype="CloudManaged")["cluster"][0]
        self.host = api.addHost(zoneid=self.zone["id"], podid=self.pod["id"], clusterid=self.cluster["id"],
                                hypervisor="KVM", url=self.agent.url, username="root",
                                password=self.agent.token)["host"][0]
        local_dir = self.tmp / "local"
        local_dir.mkdir()
        self.local = api.createStoragePool(name="local", url=f"file://localhost{local_dir}", zoneid=self.zone["id"],
                                           scope="host", hostid=self.host["id"])["storagepool"]
        self.local_dir = local_dir
        self.local_do = api.createDiskOffering(name="local-custom", customized=True, displaytext="local",
                                               storagetype="local")["diskoffering"]
        so = api.createServiceOffering(name="tiny-local", cpunumber=1, cpuspeed=500, memory=256, rootdisksize=1,
                                       displaytext="tiny", storagetype="local")["serviceoffering"]
        # no details: no kernel, so the agent starts QEMU paused under KVM with a virtio-scsi controller
        self.vm = api.deployVirtualMachine(zoneid=self.zone["id"], serviceofferingid=so["id"],
                                           hostid=self.host["id"], name="bench-vm")["virtualmachine"]
        self.direct = AgentClient(self.agent.url, self.agent.token, timeout=60)   # what channel() builds
        self.direct_fast = AgentClient(self.agent.url, self.agent.token, timeout=60, poll_interval=0.01)
        self.local_spec = self._spec(self.local["id"])

    def _spec(self, pool_uuid: str) -> dict:
        """The pool as the control plane describes it to the agent (DefaultPrimaryDriver.spec)."""
        with self.ms.db.session(readonly=True) as s:
            pool = s.scalar(select(StoragePool).where(StoragePool.uuid == pool_uuid))
            return driver_for(pool.provider).spec(pool)

    def _guest_serials(self) -> list[str]:
        vms = self.direct.call("vm_list")["vms"]
        return next(v for v in vms if v["name"] == self.vm["id"])["disks"]

    def stop(self) -> None:
        try:
            if self.vm is not None and self.ms is not None:
                try:
                    self.api.destroyVirtualMachine(id=self.vm["id"], expunge=True)
                except Exception:
                    pass
            if self.nfs_pseudo is not None:
                try:
                    self.nfs_srv.remove_export(self.nfs_pseudo)
                except Exception:
                    pass
        finally:
            if self.agent is not None:
                self.agent.kill_guests()
                self.agent.stop()
                self.agent = None
            if self.ms is not None:
                self.ms.stop()
                self.ms = None

    # ------------------------------------------------------------------ figure 4

    def _api_pair(self, i: int) -> tuple[str, float, float]:
        t0 = time.perf_counter()
        vol = self.api.createVolume(name=f"lat{i}", zoneid=self.zone["id"], diskofferingid=self.local_do["id"],
                                    size=1)["volume"]
        t1 = time.perf_counter()
        att = self.api.attachVolume(id=vol["id"], virtualmachineid=self.vm["id"])["volume"]
        t2 = time.perf_counter()
        if att["state"] != "Ready" or att.get("storageid") != self.local["id"]:
            raise RuntimeError(f"attachVolume gave {att}")
        return vol["id"], t1 - t0, t2 - t1

    def _api_cleanup(self, vol_id: str) -> None:
        self.api.detachVolume(id=vol_id)
        self.api.deleteVolume(id=vol_id)

    def _direct_pair(self) -> tuple[str, float, float]:
        name = str(uuid.uuid4())
        disk = {"pool": self.local_spec, "name": name, "format": "qcow2", "serial": name.replace("-", "")[:20],
                "device_id": 1, "qos": {}}
        t0 = time.perf_counter()
        self.direct.call("volume_create", pool=self.local_spec, name=name, size=GIB, format="qcow2",
                         provisioning="thin")
        t1 = time.perf_counter()
        self.direct.call("disk_attach", vm=self.vm["id"], disk=disk)
        t2 = time.perf_counter()
        return name, t1 - t0, t2 - t1

    def _direct_cleanup(self, name: str) -> None:
        self.direct.call("disk_detach", vm=self.vm["id"], serial=name.replace("-", "")[:20])
        self.direct.call("volume_delete", pool=self.local_spec, name=name)

    def attach_latency(self, n: int, warmup: int = 2) -> dict:
        """n createVolume+attachVolume round trips through the API, each followed (untimed) by detach and delete,
        interleaved with n direct volume_create+disk_attach agent calls (and their untimed undo)."""
        for i in range(warmup):                      # also checks that both ways really hot-plug a disk
            vid, _, _ = self._api_pair(-1 - i)
            name, _, _ = self._direct_pair()
            plugged = self._guest_serials()
            for what, serial in (("attachVolume", vid), ("disk_attach", name)):
                if serial.replace("-", "")[:20] not in plugged:
                    raise RuntimeError(f"{what} did not put disk {serial} into the guest: {plugged}")
            self._api_cleanup(vid)
            self._direct_cleanup(name)
        api, direct = [], []
        for i in range(n):
            for kind in (("api", "direct") if i % 2 == 0 else ("direct", "api")):   # alternate the order
                if kind == "api":
                    vid, c, a = self._api_pair(i)
                    api.append((vid, c, a))
                    self._api_cleanup(vid)
                else:
                    name, c, a = self._direct_pair()
                    direct.append((c, a))
                    self._direct_cleanup(name)
        if len(self._guest_serials()) != 1:
            raise RuntimeError(f"the guest should be left with its root disk only: {self._guest_serials()}")
        times = _job_times(self.ms, [(c, v[0]) for v in api for c in ("createVolume", "attachVolume")])
        jobs = _sum_jobs(times, ("createVolume", "attachVolume"), [v[0] for v in api])
        create_exec = [times[("createVolume", v[0])][1] for v in api if ("createVolume", v[0]) in times]
        attach_exec = [times[("attachVolume", v[0])][1] for v in api if ("attachVolume", v[0]) in times]
        totals = {v[0]: v[1] + v[2] for v in api}
        return {"n": n,
                "api": [v[1] + v[2] for v in api], "api_create": [v[1] for v in api], "api_attach": [v[2] for v in api],
                "direct": [c + a for c, a in direct], "direct_create": [c for c, _ in direct],
                "direct_attach": [a for _, a in direct],
                "job_exec": [j[1] for j in jobs.values()], "job_queue": [j[0] for j in jobs.values()],
                "create_exec": create_exec, "attach_exec": attach_exec,
                "outside_jobs": [totals[v] - jobs[v][2] for v in jobs]}

    # ------------------------------------------------------------------ figure 5

    def add_nfs(self) -> None:
        """An export of the NFS server given to the constructor, added as a cluster-wide pool."""
        self.nfs_pseudo = f"/bench-{uuid.uuid4().hex[:8]}"
        self.nfs_dir = self.tmp / "nfs-pool"
        url = self.nfs_srv.add_export(self.nfs_pseudo, self.nfs_dir)
        self.nfs = self.api.createStoragePool(name="nfs", url=url, zoneid=self.zone["id"], podid=self.pod["id"],
                                              clusterid=self.cluster["id"])["storagepool"]
        self.nfs_spec = self._spec(self.nfs["id"])
        self.shared_do = self.api.createDiskOffering(name="shared-custom", customized=True,
                                                     displaytext="shared")["diskoffering"]

    def cold_migration(self, mib: int, rounds: int) -> dict:
        api = self.api
        raw = self.tmp / "random.raw"
        with open(raw, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(MIB))
        # a 1 GiB data volume on the NFS pool: created by the first attach to the running VM, then detached
        vol = api.createVolume(name="mig", zoneid=self.zone["id"], diskofferingid=self.shared_do["id"], size=1)["volume"]
        vol = api.attachVolume(id=vol["id"], virtualmachineid=self.vm["id"])["volume"]
        if vol["storageid"] != self.nfs["id"]:
            raise RuntimeError(f"the volume should have been placed on the NFS pool: {vol}")
        api.detachVolume(id=vol["id"])
        image = self.nfs_dir / vol["path"]
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True,
                       capture_output=True)
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)], check=True,
                                         capture_output=True, text=True).stdout)
        if info["actual-size"] < mib * MIB:
            raise RuntimeError(f"the volume holds {info['actual-size']} bytes, not {mib} MiB")
        plain_dir = self.tmp / "plain"
        plain_dir.mkdir()
        res = {"api": [], "plain": [], "agent": [], "agent_fast": [], "back": [], "job_exec": [], "job_queue": []}
        for r in range(rounds):
            order = ("plain", "agent", "api") if r % 2 == 0 else ("api", "agent", "plain")
            for kind in order:
                src_url = self.nfs_srv.url_for(vol["path"], pseudo=self.nfs_pseudo)
                if kind == "plain":
                    dst = plain_dir / f"copy{r}"
                    t0 = time.perf_counter()
                    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", src_url, str(dst)], check=True,
                                   capture_output=True)
                    res["plain"].append(time.perf_counter() - t0)
                    dst.unlink()
                elif kind == "agent":
                    # what the control plane asks of the agent, called directly: the task polled every 0.2 s as
                    # volstack.drivers.hosts.run_long does (AgentClient.wait_task), and every 10 ms
                    for key, client in (("agent", self.direct), ("agent_fast", self.direct_fast)):
                        name = f"{key.replace('_', '-')}-copy-{r}"
                        t0 = time.perf_counter()
                        task = client.call_async("volume_copy", src_pool=self.nfs_spec, src_name=vol["path"],
                                                 dst_pool=self.local_spec, dst_name=name, format="qcow2")
                        client.wait_task(task, stall_timeout=120)
                        res[key].append(time.perf_counter() - t0)
                        self.direct.call("volume_delete", pool=self.local_spec, name=name)
                else:
                    t0 = time.perf_counter()
                    moved = api.migrateVolume(volumeid=vol["id"], storageid=self.local["id"])["volume"]
                    res["api"].append(time.perf_counter() - t0)
                    if moved["storageid"] != self.local["id"] or moved["state"] != "Ready":
                        raise RuntimeError(f"migrateVolume gave {moved}")
                    if r == rounds - 1:            # the data arrived (checked once, untimed)
                        cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw),
                                              str(self.local_dir / moved["path"])], capture_output=True, text=True)
                        if cmp.returncode != 0:
                            raise RuntimeError(f"the migrated image differs from the data written: {cmp.stdout}")
                    t0 = time.perf_counter()     # and back (untimed for the ratio: it restores the source)
                    vol = api.migrateVolume(volumeid=vol["id"], storageid=self.nfs["id"])["volume"]
                    res["back"].append(time.perf_counter() - t0)
        jobs = []
        with self.ms.db.session(readonly=True) as s:
            for j in s.scalars(select(AsyncJob).where(AsyncJob.cmd == "migrateVolume").order_by(AsyncJob.id)):
                if j.params.get("storageid") == self.local["id"]:
                    jobs.append(((j.started - j.created).total_seconds(), (j.completed - j.started).total_seconds()))
        res["job_queue"] = [q for q, _ in jobs]
        res["job_exec"] = [e for _, e in jobs]
        api.deleteVolume(id=vol["id"])
        raw.unlink()
        res["mib"] = mib
        return res


# ====================================================================== figure 6: Simulator hosts

def _job(conn, t, params: dict, poll: float, deadline: float) -> tuple[dict | None, int]:
    """One async API call polled to completion as the cs client does (query at once, then every `poll` s).
    Returns (job result or None on failure, HTTP requests sent)."""
    status, body = loadgen.call(conn, t, params)
    if status != 200:
        return None, 1
    jobid = next(iter(json.loads(body).values()))["jobid"]
    n = 1
    while time.monotonic() < deadline:
        status, body = loadgen.call(conn, t, {"command": "queryAsyncJobResult", "jobid": jobid})
        n += 1
        if status != 200:
            return None, n
        j = json.loads(body)["queryasyncjobresultresponse"]
        if j["jobstatus"] != 0:
            return (j.get("jobresult") if j["jobstatus"] == 1 else None), n
        time.sleep(poll)
    return None, n


def _pairs_thread(t, zone, offering, vms, n, poll, go, ready, out):
    conn = loadgen.Conn(t.host, t.port)
    ready.wait()
    go.wait()
    pairs = requests = errors = 0
    deadline = time.monotonic() + 600
    for i in range(n):
        res, k = _job(conn, t, {"command": "createVolume", "name": f"p{i}", "zoneid": zone,
                                "diskofferingid": offering, "size": "1"}, poll, deadline)
        requests += k
        if res is None:
            errors += 1
            continue
        res, k = _job(conn, t, {"command": "attachVolume", "id": res["volume"]["id"],
                                "virtualmachineid": vms[i // 30]}, poll, deadline)
        requests += k
        if res is None or res["volume"]["state"] != "Ready":
            errors += 1
            continue
        pairs += 1
    conn.close()
    out.append((pairs, requests, errors))


def _pairs_process(t, zone, offering, vm_lists, n_each, poll, barrier, results):
    go, ready, out = threading.Event(), threading.Barrier(len(vm_lists) + 1), []

    def guarded(*a):
        try:
            _pairs_thread(*a)
        except BaseException:
            ready.abort()
            raise

    ts = [threading.Thread(target=guarded, args=(t, zone, offering, vms, n_each, poll, go, ready, out), daemon=True)
          for vms in vm_lists]
    for th in ts:
        th.start()
    try:
        ready.wait(timeout=60)
        barrier.wait(timeout=60)
    except threading.BrokenBarrierError:
        barrier.abort()
        raise
    cpu0, wall0 = time.process_time(), time.monotonic()
    go.set()
    for th in ts:
        th.join(timeout=660)
    results.put((sum(o[0] for o in out), sum(o[1] for o in out), sum(o[2] for o in out),
                 time.process_time() - cpu0, time.monotonic() - wall0, len(out) == len(ts)))


class SimStorage:
    """A management server with one Simulator host and pool: every host command succeeds at once in memory."""

    def __init__(self, tmp: Path, threads: int = 8):
        self.ms = ManagementServer(f"sqlite:///{tmp / 'sim.db'}", tmp / "volstack.key", port=0, threads=threads,
                                   heartbeat_seconds=5.0).start()
        try:
            api = self.api = _client(self.ms)
            self.zone = api.createZone(name="simz", networktype="Advanced")["zone"]
            pod = api.createPod(name="simp", zoneid=self.zone["id"])["pod"]
            cl = api.addCluster(clustername="simc", zoneid=self.zone["id"], podid=pod["id"], hypervisor="Simulator",
                                clustertype="CloudManaged")["cluster"][0]
            api.addHost(zoneid=self.zone["id"], podid=pod["id"], clusterid=cl["id"], hypervisor="Simulator",
                        url=f"http://sim-{uuid.uuid4().hex[:8]}")
            api.createStoragePool(name="simpool", url="nfs://10.0.0.1/sim", zoneid=self.zone["id"], podid=pod["id"],
                                  clusterid=cl["id"], capacitybytes=1 << 50)
            self.do = api.createDiskOffering(name="custom", customized=True, displaytext="custom")["diskoffering"]
            self.so = api.createServiceOffering(name="small", cpunumber=1, cpuspeed=500, memory=256,
                                                displaytext="small")["serviceoffering"]
            self.target = loadgen.Target("127.0.0.1", self.ms.port, self.ms.admin.api_key, self.ms.admin_secret)
        except BaseException:
            self.ms.stop()
            raise

    def stop(self) -> None:
        self.ms.stop()

    def pairs(self, n: int, procs: int, threads: int, poll: float = POLL) -> dict:
        """About n createVolume+attachVolume pairs over procs x threads connections, each connection on its own
        VMs (at most 30 data disks each), each call polled to completion before the next."""
        conns = procs * threads
        n_each = max(1, n // conns)
        vm_lists = [[self.api.deployVirtualMachine(zoneid=self.zone["id"], serviceofferingid=self.so["id"],
                                                   rootdisksize=1, name=f"c{c}-vm{k}")["virtualmachine"]["id"]
                     for k in range(math.ceil(n_each / 30))] for c in range(conns)]
        warm = self.api.createVolume(name="warm", zoneid=self.zone["id"], diskofferingid=self.do["id"], size=1)["volume"]
        self.api.attachVolume(id=warm["id"], virtualmachineid=vm_lists[0][0])
        self.api.detachVolume(id=warm["id"])
        self.api.deleteVolume(id=warm["id"])
        with self.ms.db.session(readonly=True) as s:
            first_job = s.scalar(select(AsyncJob.id).order_by(AsyncJob.id.desc()).limit(1))
        ctx = mp.get_context("spawn")            # the parent runs server threads: do not fork it
        barrier, results = ctx.Barrier(procs), ctx.Queue()
        ps = [ctx.Process(target=_pairs_process, daemon=True,
                          args=(self.target, self.zone["id"], self.do["id"], vm_lists[i * threads:(i + 1) * threads],
                                n_each, poll, barrier, results)) for i in range(procs)]
        cpu0 = time.process_time()          # this process is the management server (and idle otherwise)
        with LockMeter(self.ms.db.engine) as sql:
            rows = loadgen.run_processes(ps, results, 700)
        server_cpu = time.process_time() - cpu0
        if not all(r[5] for r in rows):
            raise RuntimeError("a client thread failed (see its traceback above)")
        pairs, requests, errors = (sum(r[i] for r in rows) for i in range(3))
        if errors:
            raise RuntimeError(f"Simulator pairs: {errors} failed calls or jobs")
        seconds = max(r[4] for r in rows)
        exec_by_cmd = {"createVolume": [], "attachVolume": []}
        queue_all = []
        with self.ms.db.session(readonly=True) as s:
            for j in s.scalars(select(AsyncJob).where(AsyncJob.id > first_job)):
                if j.cmd in exec_by_cmd and j.completed and j.started:
                    exec_by_cmd[j.cmd].append((j.completed - j.started).total_seconds())
                    queue_all.append((j.started - j.created).total_seconds())
        return {"pairs": pairs, "rate": pairs / seconds, "seconds": seconds, "requests_per_pair": requests / pairs,
                "server_ms_per_pair": server_cpu / pairs * 1e3,
                "statements_per_pair": sql.statements / pairs, "driver_ms_per_pair": sql.seconds / pairs * 1e3,
                "lock_ms_per_pair": sql.lock_seconds / pairs * 1e3,
                "create_exec": exec_by_cmd["createVolume"], "attach_exec": exec_by_cmd["attachVolume"],
                "queue": queue_all}

    def list_zones(self, rounds: int, duration: float, procs: int, threads: int) -> tuple[loadgen.Result, float]:
        """The best of `rounds` listZones runs, and the server's CPU ms per request in that run."""
        best = None
        for _ in range(rounds):
            cpu0 = time.process_time()
            r = loadgen.run(self.target, work=(LIST_ZONES, b"listzonesresponse"), procs=procs, threads=threads,
                            duration=duration)
            cpu = time.process_time() - cpu0
            if r.errors:
                raise RuntimeError(f"listZones: {r.errors} failed requests")
            if best is None or r.rate > best[0].rate:
                best = (r, cpu / (r.requests + 20 * procs * threads) * 1e3)   # + loadgen's 20 warm-ups per conn
        return best


# ====================================================================== table rows

def real_rows(tmp: Path, cfg: dict) -> list[tuple]:
    """Figures 4 and 5. A machine without QEMU or nfs-ganesha gets 'skipped' rows, not a failure.
    The NFS server is taken first: when the test suite holds it, wait for it ($VOLSTACK_NFS_WAIT seconds)
    rather than measure while the suite loads the machine."""
    if not (shutil.which("qemu-img") and shutil.which("qemu-system-x86_64")):
        return [("create+attach, real agent / cold migration", "skipped", "QEMU is not installed", None)]
    from nfsserver import NfsServerBusy, shared_server, stop_shared_server
    nfs_srv, nfs_skip = None, None
    if not (shutil.which("ganesha.nfsd") and shutil.which("rpcbind")):
        nfs_skip = "nfs-ganesha or rpcbind is not installed"
    else:
        try:
            nfs_srv = shared_server()    # NfsServerBusy (after $VOLSTACK_NFS_WAIT s) if another run has it
        except NfsServerBusy as exc:
            wait = os.environ.get("VOLSTACK_NFS_WAIT") or "0"
            nfs_skip = f"NFS busy (waited {wait} s, VOLSTACK_NFS_WAIT): test suite running?"
            print(f"storage figures: {exc}\n  -> cold migration skipped; the other figures are measured while "
                  "another process (the test suite?) loads the machine", flush=True)
    rows, rs = [], None
    try:
        rs = RealStorage(tmp, nfs_srv)
        rows += attach_rows(rs.attach_latency(cfg["attach_n"]))
        if nfs_srv is None:
            rows.append((f"cold migration NFS -> local, {cfg['mig_mib']} MiB", "skipped", nfs_skip, None))
        else:
            rs.add_nfs()
            rows += migration_rows(rs.cold_migration(cfg["mig_mib"], cfg["mig_rounds"]))
    finally:
        if rs is not None:
            rs.stop()
        if nfs_srv is not None:
            stop_shared_server()        # the shared server this process started (stopped by its PIDs)
    return rows


def attach_rows(a: dict) -> list[tuple]:
    p50, p95 = (lambda v: _ms(pct(v, 50))), (lambda v: _ms(pct(v, 95)))
    return [
        (f"create+attach data volume, real agent, N={a['n']}, p50", f"{p50(a['api']):,.1f} ms",
         f"{p50(a['direct']):,.1f} ms (AgentClient direct)", pct(a["direct"], 50) / pct(a["api"], 50)),
        ("  p95", f"{p95(a['api']):,.1f} ms", f"{p95(a['direct']):,.1f} ms", pct(a["direct"], 95) / pct(a["api"], 95)),
        ("  createVolume / attachVolume round trips, p50", f"{p50(a['api_create']):,.1f} / {p50(a['api_attach']):,.1f} ms",
         f"{p50(a['direct_create']):,.1f} / {p50(a['direct_attach']):,.1f} ms direct", None),
        ("  server: job execution (create + attach), p50", f"{p50(a['job_exec']):,.1f} ms",
         f"create {p50(a['create_exec']):,.1f} + attach {p50(a['attach_exec']):,.1f} ms", None),
        ("  server: queue wait (submit -> worker), p50", f"{p50(a['job_queue']):,.1f} ms", "", None),
        ("  client side: HTTP + polling outside the jobs, p50", f"{p50(a['outside_jobs']):,.1f} ms",
         f"poll every {POLL * 1e3:.0f} ms", None)]


def migration_rows(m: dict) -> list[tuple]:
    mib = m["mib"]
    api, plain, agent, fast, back = (mib / min(m[k]) for k in ("api", "plain", "agent", "agent_fast", "back"))
    return [
        (f"cold migration NFS -> local, {mib} MiB, best of {len(m['api'])}", f"{api:,.0f} MiB/s",
         f"{plain:,.0f} MiB/s (qemu-img convert)", api / plain),
        ("  agent volume_copy task, polled every 10 ms", f"{fast:,.0f} MiB/s",
         f"{_ms(min(m['agent_fast'])):,.0f} ms vs {_ms(min(m['plain'])):,.0f} ms plain", fast / plain),
        ("  the same, polled every 0.2 s (as run_long does)", f"{agent:,.0f} MiB/s",
         f"{_ms(min(m['agent'])):,.0f} ms, median {_ms(statistics.median(m['agent'])):,.0f} ms", agent / plain),
        ("  migrateVolume round trip / job execution, best", f"{_ms(min(m['api'])):,.0f} ms",
         f"job {_ms(min(m['job_exec'])):,.0f} ms, queue {_ms(min(m['job_queue'])):,.0f} ms", None),
        ("  back local -> NFS via the API (not in ratio)", f"{back:,.0f} MiB/s", "", None)]


def sim_rows(tmp: Path, cfg: dict, procs: int, threads: int, empty_jobs_rate: float | None) -> list[tuple]:
    sim = SimStorage(tmp)
    try:
        p = sim.pairs(cfg["sim_pairs"], procs, threads)
        lz, lz_cpu_ms = sim.list_zones(cfg["rounds"], cfg["duration"], procs, threads)
    finally:
        sim.stop()
    rows = [(f"create+attach pairs, Simulator host, N={p['pairs']}, {procs * threads} conns",
             f"{p['rate']:,.1f} pairs/s", f"{lz.rate:,.0f} req/s (signed listZones, same server)", p["rate"] / lz.rate),
            ("  HTTP requests per pair (2 calls + polls)", f"{p['requests_per_pair']:.1f}",
             f"{p['rate'] * p['requests_per_pair']:,.0f} req/s in all", None),
            ("  server process CPU per pair / per listZones", f"{p['server_ms_per_pair']:,.1f} ms",
             f"{lz_cpu_ms:,.2f} ms", None),
            ("  server: job execution create / attach, p50",
             f"{_ms(pct(p['create_exec'], 50)):,.1f} / {_ms(pct(p['attach_exec'], 50)):,.1f} ms",
             f"queue wait p50 {_ms(pct(p['queue'], 50)):,.1f} ms", None),
            ("  SQL per pair (all threads) / driver execute() time", f"{p['statements_per_pair']:.0f} statements",
             f"{p['driver_ms_per_pair']:,.1f} ms", None),
            ("    of which waiting in BEGIN IMMEDIATE (write lock)", f"{p['lock_ms_per_pair']:,.1f} ms", "", None)]
    if empty_jobs_rate:
        rows.append(("  jobs/s (2 per pair) vs empty SQLite jobs above", f"{2 * p['rate']:,.0f} jobs/s",
                     f"{empty_jobs_rate:,.0f} jobs/s", 2 * p["rate"] / empty_jobs_rate))
    return rows
