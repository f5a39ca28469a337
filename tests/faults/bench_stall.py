"""listZones while a graceful stop and a detach run (issue 12, seen point 5: a stop of 10.6 s made a concurrent
listZones take 9.95 s). One real guest on a local pool, no kills:

    .venv/bin/python -m tests.faults.bench_stall [--rounds 3]

prints the latency of listZones (every 50 ms) during each stopVirtualMachine and detachVolume."""
import argparse
import tempfile
import threading
import time
from pathlib import Path

from tests.faults.workload import Api, Rig


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rig = Rig(Path(tempfile.mkdtemp(prefix="volstack-stall-")), None)
    rig.start()
    api = Api(rig)
    try:
        zone = api.call("listZones")["zone"][0]["id"]
        so = api.call("listServiceOfferings", name="tiny")["serviceoffering"][0]["id"]
        do = api.call("listDiskOfferings", name="d1")["diskoffering"][0]["id"]
        tiny = api.call("listTemplates", templatefilter="all", name="tiny")["template"][0]["id"]
        vm = api.job(api.call("deployVirtualMachine", zoneid=zone, serviceofferingid=so, templateid=tiny)["jobid"])
        vm = vm["virtualmachine"]["id"]
        vol = api.job(api.call("createVolume", name="d", zoneid=zone, diskofferingid=do)["jobid"])["volume"]["id"]
        for _ in range(args.rounds):
            for cmd, params in (("attachVolume", dict(id=vol, virtualmachineid=vm)), ("detachVolume", dict(id=vol)),
                                ("stopVirtualMachine", dict(id=vm)), ("startVirtualMachine", dict(id=vm))):
                samples, stop = [], threading.Event()

                def probe():
                    while not stop.wait(0.05):
                        t0 = time.monotonic()
                        api.call("listZones")
                        samples.append(time.monotonic() - t0)
                th = threading.Thread(target=probe)
                t0 = time.monotonic()
                th.start()
                out = api.job(api.call(cmd, **params)["jobid"])
                took = time.monotonic() - t0
                stop.set()
                th.join()
                samples.sort()
                p99 = samples[max(0, int(len(samples) * 0.99) - 1)] if samples else 0
                print(f"{cmd:20s} {took:6.2f} s  listZones n={len(samples):3d} p50={samples[len(samples) // 2] * 1000 if samples else 0:6.1f} ms "
                      f"p99={p99 * 1000:7.1f} ms max={samples[-1] * 1000 if samples else 0:7.1f} ms"
                      + (f"  error {out.get('errorcode')}" if out.get("errorcode") else ""), flush=True)
    finally:
        rig.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
