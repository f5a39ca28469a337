"""Encryption figures (13): guest I/O on a LUKS-encrypted volume as a ratio of the same I/O on a clear volume of
the same size, on the same pool, attached to the same running guest, measured in the same run.

Real parts: a management server (SQLite, this process), one `volstack agent` (qemu hypervisor) running the tiny
test guest under TCG, a host-local file pool (qcow2; the encrypted volume is qcow2 with LUKS encryption, AES-256
XTS in QEMU on the host's CPU). Both volumes are first filled by the guest (so reads decrypt real clusters),
then measured alternately, best of `enc_rounds`:
- sequential: O_DIRECT dd of `enc_mib` MiB in 1 MiB blocks, read and write;
- small requests: 4 KiB O_DIRECT reads and writes in one dd (IOPS: each request pays its own decryption). This
  stands for random I/O: the tiny guest has no tool that reads at random offsets in one process (one dd per
  read is dominated by the process spawn under TCG: tried, the difference vanished in the noise), and with
  O_DIRECT in the guest and the qcow2 in the host's page cache the order of the offsets does not change what
  a request costs.
"""
import time
from pathlib import Path

from bench_snapshots import SnapBench, one_host_cloud

MIB = 2 ** 20


class EncBench:
    def __init__(self, tmp: Path, mib: int):
        self.tmp, self.mib = tmp / "encryption", mib
        self.ms, self.agent, api, zone, vm, listed = one_host_cloud(self.tmp, "enc")
        self.api = api
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

    def small(self, kind: str, op: str, n: int) -> float:
        """IOPS of n 4 KiB O_DIRECT requests in one dd (each one virtio request, each paying its own decryption)."""
        return self.con.bench(op, self.serial[kind], "4k", n, timeout=600).iops

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
                                 ("4 KiB read", lambda k: b.small(k, "read", cfg["enc_small"])),
                                 ("4 KiB write", lambda k: b.small(k, "write", cfg["enc_small"]))):
                    best[(what, kind)] = max(best.get((what, kind), 0), fn(kind))
    finally:
        b.close()
    out = []
    for what, unit, label in (("seq read", "MiB/s", f"{cfg['enc_mib']} MiB, 1 MiB blocks"),
                              ("seq write", "MiB/s", f"{cfg['enc_mib']} MiB, 1 MiB blocks"),
                              ("4 KiB read", "IOPS", f"{cfg['enc_small']} requests"),
                              ("4 KiB write", "IOPS", f"{cfg['enc_small']} requests")):
        enc, clear = best[(what, "encrypted")], best[(what, "clear")]
        out.append((f"guest {what} on a LUKS volume ({label})", f"{enc:,.1f} {unit}",
                    f"clear volume: {clear:,.1f} {unit}", enc / clear))
    return out


if __name__ == "__main__":
    import sys
    import tempfile
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    with tempfile.TemporaryDirectory() as d:
        for r in rows(Path(d), {"enc_mib": 64, "enc_rounds": 2, "enc_small": 1000}):
            print(r)
