"""Template download figures (8 and 9 in README.md), each next to its limit measured in the same run.

7. A metalink download from 3 mirrors, each paced to the same rate, against one such mirror alone.
8. An unthrottled single-source download (checksum verified, format probed, placed in a directory pool)
   against `curl -o` of the same URL; and the registration-time checksum check of a direct-download
   template (fetch and SHA-256, nothing stored: `download.verify`) against the same curl.

The HTTP servers (tests/httpserver.py) run in a child process, so they do not share this process's GIL
with the downloader (curl does not either). Everything listens on 127.0.0.1 and lives in the run's
temporary directory; the child process is stopped by this module.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIB = 1 << 20


def _serve(args) -> None:
    """Child process: `--serve FILE RATE N` serves FILE at /f on N servers, paced to RATE bytes/s (0: no limit),
    prints the ports, then runs until stdin closes."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from httpserver import FileServer
    path, rate, n = args[0], int(args[1]), int(args[2])
    servers = [FileServer().start() for _ in range(n)]
    for s in servers:
        s.add("/f.raw", file=path, rate=rate or None)
    size = os.path.getsize(path)
    servers[0].add("/f.metalink", data=(   # lists every mirror, priority in server order
        '<?xml version="1.0"?><metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="f.raw">'
        f'<size>{size}</size>' + "".join(f'<url priority="{i + 1}">{s.url("/f.raw")}</url>'
                                         for i, s in enumerate(servers)) + "</file></metalink>").encode())
    print(" ".join(str(s.port) for s in servers), flush=True)
    sys.stdin.read()
    for s in servers:
        s.stop()


class Mirrors:
    def __init__(self, path: Path, rate: int, n: int):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(path), str(rate), str(n)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.urls = [f"http://127.0.0.1:{p}/f.raw" for p in self.proc.stdout.readline().split()]
        self.metalink = self.urls[0].replace("/f.raw", "/f.metalink") if self.urls else None
        if len(self.urls) != n:
            self.stop()
            raise RuntimeError("the benchmark's HTTP servers did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            h.update(block)
            f.write(block)
    return h.hexdigest()


def _download(pool_dir: Path, name: str, checksum: str, **source) -> float:
    from volstack.agent import download, images
    pool = images.DirectoryPool({"uuid": "bench", "path": str(pool_dir)}, "bench")
    policy = download.Policy(allowed_cidrs=("127.0.0.0/8",))
    t0 = time.perf_counter()
    r = download.download(pool, name, "RAW", checksum="{SHA-256}" + checksum, policy=policy, **source)
    elapsed = time.perf_counter() - t0
    assert r["verified"]
    os.unlink(pool.target(name))
    return elapsed, r


def _verify(checksum: str, urls: list) -> float:
    from volstack.agent import download
    t0 = time.perf_counter()
    r = download.verify(urls, checksum="{SHA-256}" + checksum, policy=download.Policy(allowed_cidrs=("127.0.0.0/8",)))
    assert r["verified"]
    return time.perf_counter() - t0


def _curl(url: str, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - t0
    out.unlink()
    return elapsed


def rows(tmp: Path, cfg: dict) -> list[tuple]:
    tmp = tmp / "download"
    pool = tmp / "pool"
    pool.mkdir(parents=True)
    out = []
    # 7: three paced mirrors vs one
    rate, size = cfg["dl_rate_mib"] * MIB, cfg["dl_paced_mib"] * MIB
    src = tmp / "paced.raw"
    digest = _file(src, size)
    m = Mirrors(src, rate, 3)
    try:
        one, three, spread = [], [], None
        for _ in range(cfg["dl_rounds"]):
            one.append(_download(pool, "one", digest, urls=m.urls[:1])[0])
            t, r = _download(pool, "three", digest, metalink_url=m.metalink)
            assert r["segmented"]
            three.append(t)
            spread = r["mirrors"]
    finally:
        m.stop()
    mib = size / MIB
    out.append((f"metalink, 3 mirrors x {cfg['dl_rate_mib']} MiB/s, {mib:.0f} MiB", f"{mib / min(three):,.1f} MiB/s",
                f"{mib / min(one):,.1f} MiB/s (one mirror)", min(one) / min(three)))
    share = ", ".join(f"{v / size:.0%}" for v in spread.values())
    out.append(("  bytes per mirror (last round)", share, "ideal 3.0 ratio", None))
    src.unlink()
    # 8: unthrottled, one source, vs curl
    size = cfg["dl_plain_mib"] * MIB
    src = tmp / "plain.raw"
    digest = _file(src, size)
    m = Mirrors(src, 0, 1)
    try:
        ours, curl, check = [], [], []
        for i in range(cfg["dl_rounds"] + 1):
            trio = [lambda: ours.append(_download(pool, "plain", digest, urls=m.urls)[0]),
                    lambda: curl.append(_curl(m.urls[0], tmp / "curl.out")),
                    lambda: check.append(_verify(digest, m.urls))]
            for f in (trio if i % 2 == 0 else trio[::-1]):
                f()
    finally:
        m.stop()
    mib = size / MIB
    out.append((f"one source, unthrottled, {mib:.0f} MiB (SHA-256 + probe)", f"{mib / min(ours):,.0f} MiB/s",
                f"{mib / min(curl):,.0f} MiB/s (curl -o)", min(curl) / min(ours)))
    out.append((f"registration checksum check, {mib:.0f} MiB (fetch + SHA-256)", f"{mib / min(check):,.0f} MiB/s",
                f"{mib / min(curl):,.0f} MiB/s (curl -o)", min(curl) / min(check)))
    shutil.rmtree(tmp)
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(sys.argv[2:])
