"""Encryption figures (13): guest I/O on a LUKS-encrypted volume as a ratio of the same I/O on a clear volume of
the same size, on the same pool, attached to the same running guest, measured in the same run.

Real parts: a management server (SQLite, this process), one `volstack agent` (qemu hypervisor) running the tiny
test guest under TCG, a host-local file pool (qcow2; the encrypted volume is qcow2 with LUKS encryption, AES-256
XTS in QEMU on the host's CPU). Both volumes are first filled by the guest (so reads decrypt real clusters),
then measured alternately, best of `enc_rounds`:
- sequential: O_DIRECT dd of `enc_mib` MiB in 1 MiB blocks, read and write;
- random: 4 KiB O_DIRECT reads at random offsets over the filled region, one busybox dd per read (the tiny
  guest has no fio); the same loop reading /dev/zero is subtracted, so the figure is the I/O, not the dd spawn.
"""
from pathlib import Path

from bench_snapshots import SnapBench
from bench_templates import _client

MIB = 2 ** 20


class EncBench:
    def __init__(self, tmp: Path, mib: int):
        from agentproc import AgentProcess       # tests/ is on sys.path (run.py puts it there)
        from guest import guest_image_dir
        from volstack.management import ManagementServer
        self.tmp, self.mib = tmp / "encryption", mib
        self.tmp.mkdir()
        self.ms = ManagementServer(f"sqlite:///{self.tmp / 'db.sqlite'}", self.tmp / "key", port=0,
                                   heartbeat_seconds=0.5).start()
        self.agent = AgentProcess(self.tmp / "agent", name="enc1").start()
        api = self.api = _client(self.ms)
        zone = api.createZone(name="ez", networktype="Advanced")["zone"]
        pod = api.createPod(name="ep", zoneid=zone["id"])["pod"]
        cl = api.addCluster(clustername="ec", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM",
                            clustertype="CloudManaged")["cluster"][0]
        host = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"], hypervisor="KVM",
                           url=self.agent.url, username="root", password=self.agent.token)["host"][0]
        (self.tmp / "local").mkdir()
        api.createStoragePool(name="local", url=f"file://localhost{self.tmp / 'local'}", zoneid=zone["id"],
                              scope="host", hostid=host["id"])
        so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=256, rootdisksize=1,
                                       storagetype="local", displaytext="s")["serviceoffering"]
        image = guest_image_dir()
        vm = api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"],
                                      **{"details[0].kernel": str(image / "vmlinuz"),
                                         "details[0].initrd": str(image / "initrd.img"),
                                         "details[0].append": "console=ttyS0 quiet panic=-1"})["virtualmachine"]
        listed = next(v for v in self.agent.client.call("vm_list")["vms"] if v["name"] == vm["id"])
        self.con = SnapBench._console(listed["console"])
        self.serial = {}
        for kind, encrypt in (("clear", False), ("encrypted", True)):
            off = api.createDiskOffering(name=kind, disksize=1, storagetype="local", displaytext=kind,
                                         encrypt=encrypt)["diskoffering"]
            vol = api.createVolume(name=kind, zoneid=zone["id"], diskofferingid=off["id"])["volume"]
            vol = api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
            assert (vol.get("encryptformat") == "LUKS") == encrypt
            self.serial[kind] = vol["id"].replace("-", "")[:20]
            self.con.dev(self.serial[kind])
            self.con.bench_write(self.serial[kind], mib)           # every measured cluster exists

    def sequential(self, kind: str, op: str) -> float:
        fn = self.con.bench_read if op == "read" else self.con.bench_write
        return fn(self.serial[kind], self.mib, timeout=600).mib_per_s

    def random_reads(self, kind: str, n: int) -> float:
        """4 KiB random O_DIRECT reads per second, the dd spawn cost (the /dev/zero loop) subtracted."""
        blocks = self.mib * 256
        def loop(src: str) -> float:
            out = self.con.sh(f"s=$(date +%s%N); i=0; while [ $i -lt {n} ]; do dd if={src} of=/dev/null bs=4096 "
                              f"count=1 skip=$(((RANDOM * 32768 + RANDOM) % {blocks})) iflag=direct "
                              "2>/dev/null; i=$((i+1)); done; echo $(( $(date +%s%N) - s ))", timeout=600)
            return int(out[-1]) / 1e9
        dev = self.con.dev(self.serial[kind])
        io = loop(dev) - loop("/dev/zero")
        return n / max(io, 1e-6)

    def close(self) -> None:
        try:
            self.con.close()
        except Exception:
            pass
        self.agent.kill_guests()
        self.agent.stop()
        self.ms.stop()


def rows(tmp: Path, cfg: dict) -> list[tuple]:
    b = EncBench(tmp, cfg["enc_mib"])
    try:
        best = {}
        for _ in range(cfg["enc_rounds"]):
            for kind in ("clear", "encrypted"):           # alternated, so load changes hit both alike
                for what, fn in (("seq read", lambda k: b.sequential(k, "read")),
                                 ("seq write", lambda k: b.sequential(k, "write")),
                                 ("rand read", lambda k: b.random_reads(k, cfg["enc_rand"]))):
                    best[(what, kind)] = max(best.get((what, kind), 0), fn(kind))
    finally:
        b.close()
    out = []
    for what, unit, label in (("seq read", "MiB/s", f"{cfg['enc_mib']} MiB, 1 MiB blocks"),
                              ("seq write", "MiB/s", f"{cfg['enc_mib']} MiB, 1 MiB blocks"),
                              ("rand read", "IOPS", f"{cfg['enc_rand']} x 4 KiB")):
        enc, clear = best[(what, "encrypted")], best[(what, "clear")]
        out.append((f"guest {what} on a LUKS volume ({label})", f"{enc:,.1f} {unit}",
                    f"clear volume: {clear:,.1f} {unit}", enc / clear))
    return out


if __name__ == "__main__":
    import sys
    import tempfile
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    with tempfile.TemporaryDirectory() as d:
        for r in rows(Path(d), {"enc_mib": 64, "enc_rounds": 2, "enc_rand": 200}):
            print(r)
