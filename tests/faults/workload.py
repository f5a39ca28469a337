"""The fault workload of issue 12: a seeded random mix of storage and VM operations on real pools (a local
SharedMountPoint pool and an NFS pool served by nfs-ganesha), a file image store and real QEMU guests, with
seeded SIGKILLs of the management server and of the host agent, then a census (tests/faults/census.py).

    .venv/bin/python -m tests.faults.workload --seed 7 --ops 200 --kills 18        # the long form
    .venv/bin/python -m tests.faults.workload --seed 1 --ops 30 --kills 4 --json    # about what CI runs

A kill lands while a job runs: the operation is submitted, the runner waits a seeded 0–1.5 s, kills the
management server (2 kills in 3) or the agent, starts it again (same port, same data) and waits for the job's
outcome. Every API answer is recorded by its code. Data: the runner writes seeded patterns into detached volumes
with qemu-io and checks them in the census (a revert sets the expected data back to the snapshot's).
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from cs import CloudStack, CloudStackApiException

from tests.agentproc import AgentProcess, wait_until
from tests.faults import census

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(os.environ.get("VOLSTACK_TEMPLATE_DIR") or Path.home() / ".cache/volstack/template") / "volstack-tiny.qcow2"
INTERRUPTED = "was interrupted because the management server running it stopped"
MIB = 1 << 20


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


class Rig:
    """The processes: one agent (real QEMU guests) and one management server, each killable and restartable on
    the same port and data."""

    def __init__(self, root: Path, nfs_url: str | None, hosts: int = 1):
        self.root, self.nfs_url = root, nfs_url
        self.port = _free_port()
        self.agents = [AgentProcess(root / ("agent" if i == 0 else f"agent{i + 1}"), "qemu", f"host{i + 1}")
                       for i in range(hosts)]
        self.agent = self.agents[0]
        self.ms = None
        self.ms_log = root / "ms.log"

    def start(self):
        for a in self.agents:
            a.start()
        self.start_ms()

    def start_ms(self):
        cmd = [sys.executable, "-m", "tests.faults.msproc", "--data", str(self.root), "--port", str(self.port),
               "--template", str(TEMPLATE)] + [x for a in self.agents for x in ("--agent-url", a.url)] + (
                   ["--nfs-url", self.nfs_url] if self.nfs_url else [])
        self.ms = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.ms_log, "ab"), cwd=ROOT,
                                   stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        got = {}
        while len(got) < 3:
            line = self.ms.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"the management server did not start; see {self.ms_log}")
            k, _, v = line.strip().partition(" ")
            got[k] = v
        self.keys = got

    def kill_ms(self):
        self.ms.kill()
        self.ms.wait()
        self.start_ms()

    def kill_agent(self, which: int = 0):
        self.agents[which % len(self.agents)].restart(signal.SIGKILL, keep_port=True)

    def stop(self):
        if self.ms is not None and self.ms.poll() is None:
            self.ms.send_signal(signal.SIGTERM)
            self.ms.wait(timeout=60)
        for agent in self.agents:
            try:
                for vm in agent.client.call("vm_list")["vms"]:
                    agent.client.call("vm_destroy", name=vm["name"])
            except Exception:
                pass
            agent.stop()
            agent.kill_guests()


class Api:
    """cs calls that record every answer's code and wait out a management server restart."""

    def __init__(self, rig: Rig):
        self.rig, self.codes, self.errors = rig, {}, []

    def _client(self):
        k = self.rig.keys
        return CloudStack(endpoint=k["ENDPOINT"], key=k["KEY"], secret=k["SECRET"], timeout=120, fetch_result=False)

    def call(self, _cmd, **params):
        for _ in range(200):
            try:
                out = getattr(self._client(), _cmd)(**params)
                self.codes[200] = self.codes.get(200, 0) + 1
                return out
            except CloudStackApiException as e:
                code = e.response.status_code if e.response is not None else 0
                self.codes[code] = self.codes.get(code, 0) + 1
                text = (e.error or {}).get("errortext", "") if isinstance(e.error, dict) else str(e.error)
                self.errors.append((_cmd, code, text))
                return {"errorcode": code, "errortext": text}
            except OSError:
                time.sleep(0.2)          # the server is being restarted
        raise RuntimeError(f"{_cmd}: the management server did not answer")

    def job(self, jobid, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.call("queryAsyncJobResult", jobid=jobid)
            if r.get("errorcode"):
                return r
            if r.get("jobstatus") == 1:
                return r.get("jobresult") or {}
            if r.get("jobstatus") == 2:
                res = r.get("jobresult") or {}
                code = res.get("errorcode", 0)
                key = f"job {code}" + (" (interrupted)" if INTERRUPTED in res.get("errortext", "") else "")
                self.codes[key] = self.codes.get(key, 0) + 1
                self.errors.append((r.get("cmd"), code, res.get("errortext", "")))
                return {"errorcode": code, "errortext": res.get("errortext", "")}
            time.sleep(0.2)
        raise RuntimeError(f"job {jobid} did not end within {timeout} s")


class Workload:
    OPS = ("create", "attach", "detach", "resize", "migrate", "snapshot", "revert", "template", "deploy", "stop",
           "start", "destroy", "write", "migrate_vm", "delete_volume")

    def __init__(self, rig: Rig, seed: int, ops: int, kills: int, spare_deploys: bool = False):
        """spare_deploys: no kill lands on a deploy (a management server killed while a deploy seeds a pool with
        the template leaves the copy Creating, and the next deploy waits template_cache.STALE_SEED, 10 min)."""
        self.rig, self.api, self.rnd = rig, Api(rig), random.Random(seed)
        self.spare_deploys = spare_deploys
        self.ops, self.kills_left, self.done = ops, min(kills, ops), 0
        self.expected = {}       # volume uuid -> [(offset, pattern)] written and not reverted away
        self.snap_data = {}      # snapshot uuid -> the volume's expected data when it was taken
        self.log, self.latency, self.latency_stops, self._current = [], [], [], None

    # ---- the objects as the API lists them
    def _list(self, cmd, key, **kw):
        return self.api.call(cmd, listall=True, **kw).get(key, [])

    def _pick(self, items):
        return self.rnd.choice(items) if items else None

    def setup(self):
        zone = self._list("listZones", "zone")[0]
        self.zone = zone["id"]
        self.so = self._list("listServiceOfferings", "serviceoffering", name="tiny")[0]["id"]
        offerings = {o["name"]: o["id"] for o in self._list("listDiskOfferings", "diskoffering")}
        self.d1, self.custom = offerings["d1"], offerings["custom"]
        wait_until("the template to be ready", lambda: any(t["isready"] for t in self._list(
            "listTemplates", "template", templatefilter="all", name="tiny")), timeout=120)
        self.tiny = self._list("listTemplates", "template", templatefilter="all", name="tiny")[0]["id"]
        self.pools = {p["id"]: p for p in self._list("listStoragePools", "storagepool")}
        self.hosts = [h["id"] for h in self._list("listHosts", "host", type="Routing")]

    def _submit(self, cmd, **params):
        """An operation: submitted, possibly hit by a kill while its job runs, then waited for."""
        self._current = cmd
        r = self.api.call(cmd, **params)
        self.done += 1
        if r.get("errorcode") or "jobid" not in r:
            outcome = r
        else:
            left = self.ops - self.done + 1      # kills land on jobs, spread over the run, all of them used
            spared = self.spare_deploys and cmd == "deployVirtualMachine"
            if not spared and (self.kills_left and self.rnd.random() < 2 * self.kills_left / left
                               or self.kills_left >= left):
                self.kills_left -= 1
                time.sleep(self.rnd.uniform(0, 1.5))
                victim = "ms" if self.rnd.random() < 2 / 3 else "agent"
                if victim == "ms":
                    self.rig.kill_ms()
                else:
                    which = self.rnd.randrange(len(self.rig.agents))
                    self.rig.kill_agent(which)
                    victim = f"agent{which + 1}"
                self.log.append(("kill", victim, cmd))
            outcome = self.api.job(r["jobid"])
        self._current = None
        self.log.append((cmd, params, outcome.get("errorcode"), outcome.get("errortext", "")[:600]))
        return outcome

    def step(self):
        """One operation: ops whose objects are missing are drawn again (a few times)."""
        for _ in range(8):
            out = self._one()
            if out is not None:
                return out
        self.log.append(("skip", "no applicable operation"))
        self.done += 1
        return {}

    def _one(self):
        vms = self._list("listVirtualMachines", "virtualmachine")
        vols = [v for v in self._list("listVolumes", "volume") if v["type"] == "DATADISK"]
        op = self.rnd.choice(self.OPS)
        running = [v for v in vms if v["state"] == "Running"]
        stopped = [v for v in vms if v["state"] == "Stopped"]
        detached = [v for v in vols if not v.get("virtualmachineid") and v["state"] in ("Ready", "Allocated")]
        attached = [v for v in vols if v.get("virtualmachineid") and v["state"] == "Ready"]
        if op == "deploy" or not vms:
            if len(vms) < 3:
                return self._submit("deployVirtualMachine", zoneid=self.zone, serviceofferingid=self.so,
                                    templateid=self.tiny)
            op = "stop"
        if op == "create" or (op in ("attach", "delete_volume") and not detached):
            if len(vols) < 6:
                return self._submit("createVolume", name=f"v{len(self.log)}", zoneid=self.zone,
                                    diskofferingid=self.d1)
            op = "detach"
        if op == "attach" and detached and vms:
            vm = self._pick([v for v in vms if v["state"] in ("Running", "Stopped")])
            if vm:
                return self._submit("attachVolume", id=self._pick(detached)["id"], virtualmachineid=vm["id"])
        if op == "detach" and attached:
            return self._submit("detachVolume", id=self._pick(attached)["id"])
        if op == "write":          # volumes no guest uses: detached, or attached to a stopped VM
            idle = [v for v in vols if v["state"] == "Ready" and v.get("path") and (
                not v.get("virtualmachineid") or v.get("vmstate") == "Stopped")]
            return self._write(self._pick(idle or [None]))
        if op == "resize" and vols:
            v = self._pick([v for v in vols if v["state"] == "Ready"])
            if v:
                return self._submit("resizeVolume", id=v["id"], diskofferingid=self.custom,
                                    size=v["size"] // (1 << 30) + 1)
        if op == "migrate" and vols:
            v = self._pick([v for v in vols if v["state"] == "Ready" and v.get("storageid")])
            if v:
                other = self._pick([p for p in self.pools if p != v["storageid"]])
                live = v.get("virtualmachineid") and v.get("vmstate") == "Running"
                return self._submit("migrateVolume", volumeid=v["id"], storageid=other,
                                    livemigrate="true" if live else "false")
        if op == "snapshot" and vols:
            v = self._pick([v for v in vols if v["state"] == "Ready"])
            if v:
                out = self._submit("createSnapshot", volumeid=v["id"])
                if out.get("snapshot"):
                    self.snap_data[out["snapshot"]["id"]] = list(self.expected.get(v["id"], []))
                return out
        if op in ("revert", "template"):
            snaps = [s for s in self._list("listSnapshots", "snapshot") if s["state"] == "BackedUp"]
            s = self._pick(snaps)
            if s and op == "revert":
                out = self._submit("revertSnapshot", id=s["id"])
                if not out.get("errorcode") and s["id"] in self.snap_data:
                    self.expected[s["volumeid"]] = list(self.snap_data[s["id"]])
                return out
            if s:
                return self._submit("createTemplate", snapshotid=s["id"], name=f"t{len(self.log)}",
                                    displaytext="t", ostypeid=self._list("listOsTypes", "ostype")[0]["id"])
        if op == "stop" and running:
            return self._submit("stopVirtualMachine", id=self._pick(running)["id"],
                                forced="true" if self.rnd.random() < 0.3 else "false")
        if op == "start" and stopped:
            return self._submit("startVirtualMachine", id=self._pick(stopped)["id"])
        if op == "migrate_vm" and running and len(self.rig.agents) > 1 and self.rnd.random() < 0.5:
            vm = self._pick(running)        # live, to the other host
            other = self._pick([h for h in self.hosts if h != vm.get("hostid")])
            return self._submit("migrateVirtualMachine", virtualmachineid=vm["id"], hostid=other)
        if op == "migrate_vm" and stopped:
            return self._submit("migrateVirtualMachine", virtualmachineid=self._pick(stopped)["id"],
                                storageid=self._pick(list(self.pools)))
        if op == "delete_volume" and detached:
            v = self._pick(detached)
            self.expected.pop(v["id"], None)
            return self._submit("deleteVolume", id=v["id"])
        if op == "destroy" and len(vms) > 1:
            return self._submit("destroyVirtualMachine", id=self._pick(vms)["id"], expunge="true")
        return None

    def _write(self, vol):
        if vol is None or not vol.get("path") or vol.get("storageid") not in self.pools:
            return None
        pool = self.pools[vol["storageid"]]
        path = census.pool_dir(self.rig.root, pool["type"], pool["path"]) / vol["path"]
        off, pat = self.rnd.randrange(0, 16) * MIB, self.rnd.randrange(1, 255)
        r = subprocess.run(["qemu-io", "-f", (vol.get("format") or "qcow2").lower(), "-c", f"write -P {pat} {off} 1M", str(path)],
                           capture_output=True, text=True)
        ok = r.returncode == 0 and "error" not in (r.stdout + r.stderr).lower()
        if ok:
            self.expected.setdefault(vol["id"], []).append((off, pat))
        self.log.append(("write", vol["id"], ok, (r.stderr or "")[-200:]))
        self.done += 1
        return {}

    def _probe_latency(self, stop):
        """listZones every 100 ms: how long the API takes while stops, detaches and copies run."""
        while not stop.wait(0.1):
            started, during = time.monotonic(), self._current
            try:
                self.api._client().listZones()
                self.latency.append(time.monotonic() - started)
                if during in ("stopVirtualMachine", "detachVolume") and self._current == during:
                    self.latency_stops.append(time.monotonic() - started)
            except Exception:
                pass         # the server is down (a kill): not a latency

    def run(self):
        self.setup()
        stop = threading.Event()
        probe = threading.Thread(target=self._probe_latency, args=(stop,), daemon=True)
        probe.start()
        try:
            while self.done < self.ops:
                self.step()
        finally:
            stop.set()
            probe.join()


def run(seed: int, ops: int, kills: int, root: Path, nfs_url: str | None, spare_deploys: bool = False,
        hosts: int = 1) -> dict:
    """One seeded run in root (nfs_url: an NFS export whose directory is root/nfs; None: a second local pool)."""
    rig = Rig(root, nfs_url, hosts)
    rig.start()
    try:
        w = Workload(rig, seed, ops, kills, spare_deploys)
        started = time.monotonic()
        w.run()
        result = census.take(rig, w)
        (root / "operations.json").write_text(json.dumps(w.log, indent=1, default=str))
        result.update(seed=seed, ops=ops, kills=sum(1 for e in w.log if e[0] == "kill"),
                      seconds=round(time.monotonic() - started, 1))
        return result
    finally:
        rig.stop()


def main() -> int:
    import tempfile
    import uuid
    from tests.nfsserver import shared_server, stop_shared_server
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1, help="seeds seed, seed+1, …")
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--kills", type=int, default=18)
    ap.add_argument("--json", action="store_true", help="print each run's census as JSON")
    ap.add_argument("--hosts", type=int, default=1, help="KVM hosts (agents); 2 adds live VM migration")
    ap.add_argument("--spare-deploys", action="store_true", help="no kill lands on a deploy (see Workload)")
    ap.add_argument("--no-nfs", action="store_true", help="a second local pool instead of the NFS pool (the machine's "
                                                           "one NFS server is held by another test run)")
    args = ap.parse_args()
    nfs = None if args.no_nfs else shared_server()
    failed = 0
    try:
        for seed in range(args.seed, args.seed + args.runs):
            root = Path(tempfile.mkdtemp(prefix=f"volstack-faults-{seed}-"))
            pseudo = f"/faults-{uuid.uuid4().hex[:8]}"
            url = nfs.add_export(pseudo, root / "nfs") if nfs else None
            try:
                result = run(seed, args.ops, args.kills, root, url, args.spare_deploys, args.hosts)
            finally:
                if nfs:
                    nfs.remove_export(pseudo)
            failed += not result["clean"]
            print(json.dumps(result, indent=1) if args.json else census.summary(result), flush=True)
    finally:
        stop_shared_server()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
