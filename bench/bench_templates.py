"""Template figures: seeding a template to a primary pool vs plain `qemu-img convert` of the same image,
and ROOT volume creation from a cached template for a 1 GiB and a 4 GiB template (should be flat: a
linked clone does not depend on the template's size).

Real parts: one `volstack agent` process (simulator hypervisor, so guests cost nothing, but every image
is a real qcow2 made by qemu-img) added as a KVM host, a Filesystem image store and a SharedMountPoint
pool on this machine's disk. Everything started here is stopped here.
"""
import statistics
import subprocess
import time
from pathlib import Path

from cs import CloudStack

GIB = 2 ** 30
MIB = 2 ** 20


def _client(ms) -> CloudStack:
    return CloudStack(endpoint=ms.endpoint, key=ms.admin.api_key, secret=ms.admin_secret, poll_interval=0.02,
                      fetch_result=True, job_timeout=3600, timeout=120)


class Cloud:
    def __init__(self, tmp: Path):
        from agentproc import AgentProcess       # tests/ is on sys.path (run.py puts it there)
        from volstack.management import ManagementServer
        self.tmp = tmp / "templates"
        self.tmp.mkdir()
        self.ms = ManagementServer(f"sqlite:///{self.tmp / 'db.sqlite'}", self.tmp / "key", port=0,
                                   heartbeat_seconds=0.5).start()
        self.agent = AgentProcess(self.tmp / "agent", hypervisor="simulator", name="bench1").start()
        api = self.api = _client(self.ms)
        zone = self.zone = api.createZone(name="bz", networktype="Advanced")["zone"]
        pod = api.createPod(name="bp", zoneid=zone["id"])["pod"]
        cl = api.addCluster(clustername="bc", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM",
                            clustertype="CloudManaged")["cluster"][0]
        api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"], hypervisor="KVM", url=self.agent.url,
                    username="root", password=self.agent.token)
        for d in ("store", "primary", "scratch"):
            (self.tmp / d).mkdir()
        api.addImageStore(name="s", provider="Filesystem", url=f"file://{self.tmp / 'store'}", zoneid=zone["id"])
        self.pool = api.createStoragePool(name="p", url=f"SharedMountPoint://localhost{self.tmp / 'primary'}",
                                          zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"])["storagepool"]
        self.so = api.createServiceOffering(name="b", cpunumber=1, cpuspeed=500, memory=128,
                                            displaytext="b")["serviceoffering"]
        self.vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=self.so["id"],
                                           rootdisksize=1)["virtualmachine"]

    def template(self, name: str, virtual_gib: int, data_mib: int) -> dict:
        """A template made from a data volume of virtual_gib GiB holding data_mib MiB of written data."""
        api = self.api
        off = api.createDiskOffering(name=f"o-{name}", disksize=virtual_gib, displaytext=name)["diskoffering"]
        vol = api.createVolume(name=f"v-{name}", zoneid=self.zone["id"], diskofferingid=off["id"])["volume"]
        vol = api.attachVolume(id=vol["id"], virtualmachineid=self.vm["id"])["volume"]
        api.detachVolume(id=vol["id"])
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data_mib}M",
                        str(self.tmp / "primary" / vol["path"])], check=True, capture_output=True)
        return api.createTemplate(name=name, volumeid=vol["id"])["template"]

    def seed_seconds(self, t: dict) -> float:
        """prepareTemplate onto the pool, until the pool's copy is DOWNLOADED."""
        t0 = time.perf_counter()
        self.api.prepareTemplate(templateid=t["id"], zoneid=self.zone["id"], storageid=self.pool["id"])
        while True:
            listed = self.api.listTemplates(templatefilter="all", id=t["id"])["template"][0]
            if any(d["datastoreRole"] == "Primary" and d["downloadState"] == "DOWNLOADED"
                   for d in listed.get("downloaddetails", [])):
                return time.perf_counter() - t0
            time.sleep(0.02)

    def convert_seconds(self, t: dict) -> float:
        dst = self.tmp / "scratch" / "copy.qcow2"
        t0 = time.perf_counter()
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(self.tmp / "store" / f"{t['id']}.qcow2"),
                        str(dst)], check=True)
        took = time.perf_counter() - t0
        dst.unlink()
        return took

    def root_seconds(self, t: dict, n: int) -> list[float]:
        """deployVirtualMachine from the cached template, as a client sees it (submit to job done)."""
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            vm = self.api.deployVirtualMachine(zoneid=self.zone["id"], serviceofferingid=self.so["id"],
                                               templateid=t["id"])["virtualmachine"]
            out.append(time.perf_counter() - t0)
            self.api.destroyVirtualMachine(id=vm["id"], expunge=True)
        return out

    def clone_seconds(self, t: dict, n: int) -> list[float]:
        """The limit: qemu-img create of the same linked clone, directly."""
        base = self.tmp / "primary" / f"tmpl-{t['id']}"
        out = []
        for i in range(n):
            dst = self.tmp / "primary" / f"direct-{i}"
            t0 = time.perf_counter()
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2", str(dst)],
                           check=True)
            out.append(time.perf_counter() - t0)
            dst.unlink()
        return out

    def stop(self) -> None:
        self.agent.stop()
        self.ms.stop()


def rows(tmp: Path, cfg: dict) -> list[tuple]:
    c = Cloud(tmp)
    try:
        data = cfg.get("tmpl_mib", 512)
        big = c.template("seed", 1, data)
        seed, conv = c.seed_seconds(big), c.convert_seconds(big)
        out = [(f"template seed to a pool, {data} MiB of data", f"{data / seed:,.0f} MiB/s",
                f"qemu-img convert {data / conv:,.0f} MiB/s", conv / seed)]
        n = cfg.get("root_n", 10)
        lat = {}
        for gib in (1, 4):
            t = c.template(f"root{gib}", gib, 16)
            c.seed_seconds(t)
            lat[gib] = statistics.median(c.root_seconds(t, n))
            direct = statistics.median(c.clone_seconds(t, n))
            out.append((f"ROOT volume from cached {gib} GiB template, p50 of {n}", f"{lat[gib] * 1e3:,.0f} ms",
                        f"qemu-img create -b {direct * 1e3:,.0f} ms", direct / lat[gib]))
        out.append(("ROOT volume latency, 4 GiB vs 1 GiB template", f"{lat[4] / lat[1]:.2f}x", "flat = 1.00", lat[1] / lat[4]))
        return out
    finally:
        c.stop()
