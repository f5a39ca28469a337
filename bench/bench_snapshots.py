"""Snapshot figures: a full backup against `qemu-img convert` of the same data, an incremental backup after 1 %
of the data changed against the full one (time and bytes), and how long the guest is paused by a live snapshot.

Real parts: a management server (SQLite, this process) and one `volstack agent` process (qemu hypervisor) with a
running TCG guest (the tiny test kernel) on a host-local pool, and a Filesystem image store, all on this
machine's disk. The data volume is filled with random data, then attached to the running guest; the 1 % is
written by the guest itself (64 KiB O_DIRECT blocks spread over the data). Everything started here is stopped here.
"""
import subprocess
import time
from pathlib import Path

from bench_templates import _client

MIB = 2 ** 20


def one_host_cloud(tmp: Path, name: str, dirs=("local",)):
    """A management server, one real agent, a zone with a host-local pool ("local") and a running guest of the
    tiny test image: what the snapshot and encryption benches both measure on. Returns (ms, agent, api, zone, vm,
    the guest's vm_list entry)."""
    from agentproc import AgentProcess       # tests/ is on sys.path (run.py puts it there)
    from guest import guest_image_dir
    from volstack.management import ManagementServer
    tmp.mkdir()
    ms = ManagementServer(f"sqlite:///{tmp / 'db.sqlite'}", tmp / "key", port=0, heartbeat_seconds=0.5).start()
    agent = AgentProcess(tmp / "agent", name=f"{name}1").start()
    api = _client(ms)
    zone = api.createZone(name=f"{name}-z", networktype="Advanced")["zone"]
    pod = api.createPod(name=f"{name}-p", zoneid=zone["id"])["pod"]
    cl = api.addCluster(clustername=f"{name}-c", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM",
                        clustertype="CloudManaged")["cluster"][0]
    host = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"], hypervisor="KVM",
                       url=agent.url, username="root", password=agent.token)["host"][0]
    for d in dirs:
        (tmp / d).mkdir()
    api.createStoragePool(name="local", url=f"file://localhost{tmp / 'local'}", zoneid=zone["id"],
                          scope="host", hostid=host["id"])
    so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=256, rootdisksize=1,
                                   storagetype="local", displaytext="s")["serviceoffering"]
    image = guest_image_dir()
    vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"],
                                  **{"details[0].kernel": str(image / "vmlinuz"),
                                     "details[0].initrd": str(image / "initrd.img"),
                                     "details[0].append": "console=ttyS0 quiet panic=-1"})["virtualmachine"]
    listed = next(v for v in agent.client.call("vm_list")["vms"] if v["name"] == vm["id"])
    return ms, agent, api, zone, vm, listed


class SnapBench:
    def __init__(self, tmp: Path, data_mib: int):
        self.tmp, self.data_mib = tmp / "snapshots", data_mib
        self.ms, self.agent, api, zone, self.vm, listed = one_host_cloud(self.tmp, "snap",
                                                                        ("local", "store", "scratch"))
        self.api = api
        api.addImageStore(name="store", provider="Filesystem", url=f"file://{self.tmp / 'store'}", zoneid=zone["id"])
        off = api.createDiskOffering(name="d", disksize=1, storagetype="local", displaytext="d")["diskoffering"]
        self.monitor = listed["monitor"]
        self.con = self._console(listed["console"])
        vol = api.createVolume(name="data", zoneid=zone["id"], diskofferingid=off["id"])["volume"]
        vol = api.attachVolume(id=vol["id"], virtualmachineid=self.vm["id"])["volume"]
        api.detachVolume(id=vol["id"])
        self.image = self.tmp / "local" / vol["path"]
        rnd = self.tmp / "scratch" / "random.raw"
        with open(rnd, "wb") as f, open("/dev/urandom", "rb") as r:
            for _ in range(data_mib):
                f.write(r.read(MIB))
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(rnd), str(self.image)],
                       check=True)
        rnd.unlink()
        self.vol = api.attachVolume(id=vol["id"], virtualmachineid=self.vm["id"])["volume"]
        self.dev = self.con.dev(vol["id"].replace("-", "")[:20])
        self.paused, self.stops, self.live = 0.0, 0, 0

    @staticmethod
    def _console(path):
        from guest import GuestConsole, GuestError
        con = GuestConsole(path, timeout=120)
        deadline = time.monotonic() + 120
        while True:
            try:
                con.ping(timeout=2)
                return con
            except (TimeoutError, GuestError):
                if time.monotonic() > deadline:
                    raise

    def snapshot(self) -> tuple[float, dict]:
        """createSnapshot of the attached volume to BackedUp, as a client sees it; STOP/RESUME events of the
        guest meanwhile are read from its second QMP monitor and added up."""
        from volstack.agent.qmp import Qmp
        with Qmp(self.monitor) as q:
            t0 = time.perf_counter()
            snap = self.api.createSnapshot(volumeid=self.vol["id"])["snapshot"]
            took = time.perf_counter() - t0
            assert q.execute("query-status")["status"] == "running"
            stopped = None
            for ev in q.events:
                ts = ev["timestamp"]["seconds"] + ev["timestamp"]["microseconds"] / 1e6
                if ev["event"] == "STOP":
                    stopped, self.stops = ts, self.stops + 1
                elif ev["event"] == "RESUME" and stopped is not None:
                    self.paused, stopped = self.paused + ts - stopped, None
        self.live += 1
        assert snap["state"] == "BackedUp"
        return took, snap

    def convert_seconds(self) -> float:
        """The limit: qemu-img convert of the same image to the same filesystem (-U: the guest has it open)."""
        dst = self.tmp / "scratch" / "copy.qcow2"
        t0 = time.perf_counter()
        subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", str(self.image), str(dst)],
                       check=True)
        took = time.perf_counter() - t0
        dst.unlink()
        return took

    def change_one_percent(self, seed: int) -> int:
        """The guest rewrites 1 % of the data in 64 KiB blocks spread evenly over it; returns the bytes."""
        blocks = max(1, self.data_mib * 16 // 100)
        step = self.data_mib * 16 // blocks
        self.con.sh(f"i=0; while [ $i -lt {blocks} ]; do dd if=/dev/urandom of={self.dev} bs=65536 count=1 "
                    f"seek=$((i * {step} + {seed % step})) oflag=direct conv=notrunc 2>/dev/null; i=$((i + 1)); done",
                    timeout=300)
        return blocks * 65536

    def stop(self) -> None:
        try:
            self.con.close()
            self.api.destroyVirtualMachine(id=self.vm["id"], expunge=True)
        finally:
            self.agent.kill_guests()
            self.agent.stop()
            self.ms.stop()


def rows(tmp: Path, cfg: dict) -> list[tuple]:
    data, rounds = cfg.get("snap_mib", 256), cfg.get("snap_rounds", 3)
    b = SnapBench(tmp, data)
    try:
        full, conv = [], []
        for i in range(rounds):                # alternate, best of each
            full.append(b.snapshot()[0])
            conv.append(b.convert_seconds())
        b.api.updateConfiguration(name="kvm.incremental.snapshot", value="true")
        base_t, base = b.snapshot()
        inc_t, inc_bytes, changed = [], [], 0
        for i in range(rounds):
            changed = b.change_one_percent(i)
            t, snap = b.snapshot()
            assert snap.get("parent"), "the snapshot after the first with kvm.incremental.snapshot on is incremental"
            inc_t.append(t)
            inc_bytes.append(snap["physicalsize"])
        f, c, n = min(full), min(conv), min(inc_t)
        return [
            (f"full live snapshot to the store, {data} MiB of data", f"{data / f:,.0f} MiB/s",
             f"qemu-img convert {data / c:,.0f} MiB/s", c / f),
            (f"incremental after 1 % changed ({changed // 1024} KiB), time", f"{n:.2f} s",
             f"full {f:.2f} s", n / f),
            ("incremental after 1 % changed, bytes on the store", f"{max(inc_bytes) / MIB:,.1f} MiB",
             f"full {base['physicalsize'] / MIB:,.1f} MiB", max(inc_bytes) / base["physicalsize"]),
            (f"guest paused during {b.live} live snapshots (QMP STOP/RESUME)", f"{b.paused * 1e3:,.0f} ms",
             f"{b.stops} STOP events", None),
        ]
    finally:
        b.stop()
