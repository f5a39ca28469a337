"""Figure 7: RBD pools on a throwaway one-node Ceph cluster (scripts/ceph-up.sh, memstore, with a mgr).

- create+attach of an RBD data volume through the API (createVolume + attachVolume to a running paused
  guest), p50/p95, against the same two steps sent straight to the agent (volume_create + disk_attach);
- copy of one image out of Ceph: the agent's volume_copy RBD -> directory pool (qemu-img convert with the
  key as a secret object) against `rbd export` of the same image in the same run;
- a ROOT-volume clone of a cached base image (rbd_clone) for two base sizes: flat in the size;
- createSnapshot through the API (native snapshot + backup to an image store) against `rbd export` of the same
  image, and the incremental backup with 1 % of the image changed against the full one (time and bytes).
Run with `bench/run.py --rbd`.
"""
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests")]

MIB = 1 << 20


def _pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def _ms(s):
    return s * 1e3


class RbdBench:
    def __init__(self, tmp: Path):
        from agentproc import AgentProcess
        from cephcluster import CephCluster
        from support import client, start_server
        self.tmp = tmp
        self.ceph = CephCluster(str(tmp / "ceph")).start()
        self.agent = AgentProcess(tmp / "agent", name="rbdbench").start()
        self.ms = start_server(f"sqlite:///{tmp / 'volstack.db'}", tmp)
        self.api = client(self.ms, poll_interval=0.01)
        api = self.api
        zone = api.createZone(name="bz", networktype="Advanced")["zone"]
        pod = api.createPod(name="bp", zoneid=zone["id"])["pod"]
        cl = api.addCluster(clustername="bc", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM",
                            clustertype="CloudManaged")["cluster"][0]
        self.host = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"], hypervisor="KVM",
                                url=self.agent.url, username="root", password=self.agent.token)["host"][0]
        self.pool = api.createStoragePool(name="ceph", scope="zone", zoneid=zone["id"], hypervisor="KVM",
                                          url=self.ceph.rbd_url(), tags="RBD")["storagepool"]
        self.offering = api.createDiskOffering(name="rbd", displaytext="rbd", customized=True,
                                               tags="RBD")["diskoffering"]
        so = api.createServiceOffering(name="b", cpunumber=1, cpuspeed=500, memory=128, rootdisksize=1,
                                       displaytext="b")["serviceoffering"]
        self.vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"],
                                           hostid=self.host["id"])["virtualmachine"]
        self.zone = zone
        self.spec = self.ceph.spec(uuid=self.pool["id"])
        self.dir = tmp / "dirpool"
        self.dir.mkdir()
        self.dirpool = {"uuid": "bench-dir", "type": "Filesystem", "path": str(self.dir)}

    def stop(self) -> None:
        for fn in (self.ms.stop, self.agent.kill_guests, self.agent.stop, self.ceph.stop):
            try:
                fn()
            except Exception as exc:
                print(f"bench_rbd cleanup: {exc}", file=sys.stderr)

    def attach_latency(self, n: int) -> dict:
        api, c = self.api, self.agent.client
        out = {"api": [], "direct": []}
        for i in range(n):
            t = time.perf_counter()
            vol = api.createVolume(name=f"b{i}", zoneid=self.zone["id"], diskofferingid=self.offering["id"],
                                   size=1)["volume"]
            api.attachVolume(id=vol["id"], virtualmachineid=self.vm["id"])
            out["api"].append(time.perf_counter() - t)
            api.detachVolume(id=vol["id"])
            api.deleteVolume(id=vol["id"])
            t = time.perf_counter()
            name = f"direct-{i}"
            c.call("volume_create", pool=self.spec, name=name, size=1 << 30, format="raw")
            c.call("disk_attach", vm=self.vm["id"], disk={"pool": self.spec, "name": name, "format": "raw",
                                                           "serial": f"D{i:06d}", "device_id": 20, "qos": None})
            out["direct"].append(time.perf_counter() - t)
            c.call("disk_detach", vm=self.vm["id"], serial=f"D{i:06d}")
            c.call("volume_delete", pool=self.spec, name=name)
        return out

    def _filled(self, name: str, mib: int) -> None:
        from volstack.agent.rbd import RbdPool
        pool = RbdPool(self.spec, "bench")
        pool.make_image(name, mib * MIB, "raw")
        block = os.urandom(4 * MIB)
        with pool.image(name) as img:
            for off in range(0, mib * MIB, len(block)):
                img.write(block, off)

    def export_vs_copy(self, mib: int, rounds: int) -> dict:
        self._filled("exp", mib)
        out = {"export": [], "copy": [], "mib": mib}
        target = self.tmp / "export.raw"
        for _ in range(rounds):
            t = time.perf_counter()
            self.ceph.rbd("export", f"{self.ceph.pool}/exp", str(target), timeout=600)
            out["export"].append(time.perf_counter() - t)
            target.unlink()
            t = time.perf_counter()
            self.agent.client.call("volume_copy", src_pool=self.spec, src_name="exp", dst_pool=self.dirpool,
                                   dst_name="copy", format="raw")
            out["copy"].append(time.perf_counter() - t)
            (self.dir / "copy").unlink()
        return out

    def clone_latency(self, sizes_mib, n: int) -> dict:
        c, out = self.agent.client, {}
        for mib in sizes_mib:
            base = f"base{mib}"
            c.call("volume_create", pool=self.dirpool, name=f"t{mib}", size=mib * MIB, format="raw")
            c.call("rbd_base_import", pool=self.spec, name=base, src_pool=self.dirpool, src_name=f"t{mib}")
            times = []
            for i in range(n):
                t = time.perf_counter()
                c.call("rbd_clone", pool=self.spec, parent=base, name=f"root{mib}-{i}", size=mib * MIB)
                times.append(time.perf_counter() - t)
            out[mib] = times
        return out

    def snapshots(self, mib: int, rounds: int) -> dict:
        """createSnapshot through the API (take + backup to a Filesystem image store, job polled as clients do)
        of a volume holding `mib` MiB of random data, against `rbd export` of the same image; then 1 % of it
        rewritten and snapshotted again: the incremental backup against the full one, in time and bytes."""
        from volstack.agent.rbd import RbdPool
        api = self.api
        store = self.tmp / "store"
        store.mkdir(exist_ok=True)
        api.addImageStore(name="bstore", provider="Filesystem", url=f"file://{store}", zoneid=self.zone["id"])
        vol = api.createVolume(name="snapvol", zoneid=self.zone["id"], diskofferingid=self.offering["id"],
                               size=max(1, -(-mib // 1024)))["volume"]
        vol = api.attachVolume(id=vol["id"], virtualmachineid=self.vm["id"])["volume"]
        pool = RbdPool(self.spec, "bench")
        block = os.urandom(4 * MIB)
        with pool.image(vol["path"]) as img:
            for off in range(0, mib * MIB, len(block)):
                img.write(block, off)
        changed = max(1, mib // 100)                 # 1 % of the data, in 1 MiB pieces spread over it
        out = {"export": [], "full": [], "inc": [], "mib": mib}
        target = self.tmp / "snap-export.raw"
        for _ in range(rounds):
            t = time.perf_counter()
            self.ceph.rbd("export", f"{self.ceph.pool}/{vol['path']}", str(target), timeout=600)
            out["export"].append(time.perf_counter() - t)
            target.unlink()
            api.updateConfiguration(name="snapshot.delta.max", value="0")        # this one is a full backup
            t = time.perf_counter()
            full = api.createSnapshot(volumeid=vol["id"])["snapshot"]
            out["full"].append(time.perf_counter() - t)
            api.updateConfiguration(name="snapshot.delta.max", value="16")
            with pool.image(vol["path"]) as img:
                for k in range(changed):
                    img.write(os.urandom(MIB), k * (mib // changed) * MIB)
            t = time.perf_counter()
            inc = api.createSnapshot(volumeid=vol["id"])["snapshot"]
            out["inc"].append(time.perf_counter() - t)
            out["full_bytes"], out["inc_bytes"] = full["physicalsize"], inc["physicalsize"]
            for snap in (inc, full):
                api.deleteSnapshot(id=snap["id"])
        return out


def rbd_rows(tmp: Path, cfg: dict) -> list[tuple]:
    if not (subprocess.run(["which", "ceph-mon"], capture_output=True).returncode == 0):
        return [("RBD figures", "skipped", "Ceph is not installed (scripts/install-host.sh)", None)]
    b = RbdBench(tmp)
    try:
        a = b.attach_latency(cfg["attach_n"])
        e = b.export_vs_copy(cfg["mig_mib"], cfg["mig_rounds"])
        cl = b.clone_latency((64, 1024), 5)
        sn = b.snapshots(cfg["mig_mib"], cfg["mig_rounds"])
    finally:
        b.stop()
    exp, cp = e["mib"] / min(e["export"]), e["mib"] / min(e["copy"])
    small, big = statistics.median(cl[64]), statistics.median(cl[1024])
    return [
        (f"RBD create+attach via API, N={len(a['api'])}, p50", f"{_ms(_pct(a['api'], 50)):,.1f} ms",
         f"{_ms(_pct(a['direct'], 50)):,.1f} ms (agent direct)", _pct(a["direct"], 50) / _pct(a["api"], 50)),
        ("  p95", f"{_ms(_pct(a['api'], 95)):,.1f} ms", f"{_ms(_pct(a['direct'], 95)):,.1f} ms",
         _pct(a["direct"], 95) / _pct(a["api"], 95)),
        (f"copy RBD -> file (volume_copy), {e['mib']} MiB, best of {len(e['copy'])}", f"{cp:,.0f} MiB/s",
         f"{exp:,.0f} MiB/s (rbd export)", cp / exp),
        ("ROOT clone of a cached base, 64 MiB / 1 GiB base, median", f"{_ms(small):,.1f} / {_ms(big):,.1f} ms",
         "flat in the base size", small / big),
        (f"createSnapshot (RBD, full backup), {sn['mib']} MiB, best of {len(sn['full'])}",
         f"{sn['mib'] / min(sn['full']):,.0f} MiB/s", f"{sn['mib'] / min(sn['export']):,.0f} MiB/s (rbd export)",
         min(sn["export"]) / min(sn["full"])),
        (f"  incremental, 1 % of {sn['mib']} MiB changed: time", f"{_ms(min(sn['inc'])):,.1f} ms",
         f"{_ms(min(sn['full'])):,.1f} ms full", min(sn["inc"]) / min(sn["full"])),
        ("  incremental: bytes on the store", f"{sn['inc_bytes'] / MIB:,.1f} MiB",
         f"{sn['full_bytes'] / MIB:,.1f} MiB full", sn["inc_bytes"] / sn["full_bytes"]),
    ]
