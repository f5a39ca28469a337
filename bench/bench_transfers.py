"""Transfer figures (10 and 11 in README.md), each next to its limit measured in the same run.

10. An extract download (`curl -o` of a signed /transfer/download URL served by a real `volstack agent`
    from a Filesystem store: signature check, then sendfile) against `curl -o` of the same file as a
    file:// URL (the same client and sink, no HTTP and no agent).
11. A browser upload (`curl -F file=@…` multipart POST to a signed /transfer/upload URL: streamed to a
    temporary name with SHA-256 on a second thread, probed, linked into place) against `curl -o` of the same
    file as a file:// URL into the store (the bytes written once by the same client, no HTTP and no agent).

The agent runs as a child process; everything lives in the run's temporary directory.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIB = 1 << 20


def _best(fn, rounds: int) -> float:
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        best = t if best is None else min(best, t)
    return best


def rows(tmp: Path, cfg: dict) -> list[tuple]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from agentproc import AgentProcess
    from volstack import transfer_signing as signing
    tmp = tmp / "transfers"
    store = tmp / "store"
    store.mkdir(parents=True)
    size = cfg["dl_plain_mib"] * MIB
    src = tmp / "src.raw"
    with open(src, "wb") as f:
        f.write(b"\0" * MIB)                     # a raw image: no format magic at the start
        for _ in range(size // MIB - 1):
            f.write(os.urandom(MIB))
    os.link(src, store / "obj.raw")
    agent = AgentProcess(tmp / "agent", hypervisor="simulator", name="bench").start()
    pool = {"uuid": "bench-store", "type": "Filesystem", "path": str(store)}
    rounds = cfg["dl_rounds"] + 1
    out = []
    try:
        url, _ = signing.download_url(agent.url, agent.token, {"pool": pool, "name": "obj.raw"}, "obj.raw", 3600)
        sink = tmp / "curl.out"
        curl = ["curl", "-s", "-f", "-o", str(sink)]
        ours = _best(lambda: subprocess.run(curl + [url], check=True), rounds)
        limit = _best(lambda: subprocess.run(curl + [f"file://{src}"], check=True), rounds)
        sink.unlink()
        mib = size / MIB
        out.append((f"extract download, {mib:.0f} MiB (curl of the signed URL)", f"{mib / ours:,.0f} MiB/s",
                    f"{mib / limit:,.0f} MiB/s (curl file://)", limit / ours))

        times = []
        for i in range(rounds):
            params = signing.upload_params(agent.url, agent.token, {"pool": pool, "name": f"up{i}.raw", "format": "RAW",
                                                                    "checksum": None, "max_size": None}, f"bench-{i}", 3600)
            cmd = ["curl", "-s", "-f", "-o", "/dev/null", "-H", f"X-signature: {params['signature']}",
                   "-H", f"X-metadata: {params['metadata']}", "-H", f"X-expires: {params['expires']}",
                   "-F", f"file=@{src}", params["postURL"]]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            times.append(time.perf_counter() - t0)
            os.unlink(store / f"up{i}.raw")
        into = store / "limit.raw"
        limit = _best(lambda: (subprocess.run(["curl", "-s", "-f", "-o", str(into), f"file://{src}"], check=True),
                               os.unlink(into)), rounds)
        out.append((f"browser upload, {mib:.0f} MiB (multipart POST, SHA-256 + probe)", f"{mib / min(times):,.0f} MiB/s",
                    f"{mib / limit:,.0f} MiB/s (curl file:// into the store)", limit / min(times)))
    finally:
        agent.stop()
    return out
