"""A management server as a process of its own, so the fault workload can SIGKILL it:

    python -m tests.faults.msproc --data D --port P --agent-url URL --nfs-url nfs://127.0.0.1/x --template F

On its first start it lays out the datacenter (zone, pod, cluster, the agent's host, a local pool, an NFS pool, a
file image store and a template from a local file); every start prints `KEY <api key>` and `SECRET <secret>`
and then serves until SIGTERM (or a SIGKILL, which is the point)."""
import argparse
import signal
import sys
import threading
from pathlib import Path

SETTINGS = {"expunge.delay": 0, "expunge.interval": 5, "storage.cleanup.delay": 0, "storage.cleanup.interval": 5,
            "backup.retry.interval": 5, "job.expire.minutes": 30}


def main() -> int:
    ap = argparse.ArgumentParser()
    for opt in ("--data", "--template"):
        ap.add_argument(opt, required=True)
    ap.add_argument("--agent-url", action="append", required=True, help="one per host (host1, host2, …)")
    ap.add_argument("--nfs-url", help="an NFS export for the second pool (default: a second local pool)")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    from sqlalchemy import select

    from volstack.db.engine import sqlite_url
    from volstack.db.models import Host
    from volstack.management import ManagementServer
    from volstack.services import datacenter, infra
    from volstack.services.context import system_context
    data = Path(args.data)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ms = ManagementServer(sqlite_url(data), data / "volstack.key", port=args.port, name="faults-ms",
                          heartbeat_seconds=1.0, admin_password="faults", host_check_seconds=2,
                          settle_after_seconds=5)
    ctx = system_context()
    with ms.db.session() as s:
        first = s.scalar(select(Host.id)) is None
    if first:
        datacenter.apply(ms.db, ctx, {
            "zones": [{"name": "fz", "networktype": "Advanced",
                       "pods": [{"name": "fp", "clusters": [{"name": "fc", "hypervisor": "KVM"}]}]}],
            "settings": SETTINGS,
            "disk_offerings": [{"name": "d1", "displaytext": "1 GB", "disksize": 1},
                               {"name": "custom", "displaytext": "custom", "customized": True}],
            "service_offerings": [{"name": "tiny", "displaytext": "tiny", "cpunumber": 1, "cpuspeed": 500,
                                   "memory": 128, "rootdisksize": 1}]})
        from volstack.db.models import Cluster, Pod, Zone
        with ms.db.session() as s:
            zone = s.scalar(select(Zone).where(Zone.name == "fz"))
            pod = s.scalar(select(Pod).where(Pod.zone_id == zone.id))
            cl = s.scalar(select(Cluster).where(Cluster.pod_id == pod.id))
            for i, url in enumerate(args.agent_url):
                token = (data / ("agent" if i == 0 else f"agent{i + 1}") / "token").read_text().strip()
                infra.add_host(s, ctx, zone.uuid, pod.uuid, url, "KVM", clusterid=cl.uuid, password=token,
                               username="root")
        (data / "local").mkdir(exist_ok=True)
        (data / "local2").mkdir(exist_ok=True)
        (data / "images").mkdir(exist_ok=True)
        datacenter.apply(ms.db, ctx, {
            "storage_pools": [{"name": "local", "zone": "fz", "cluster": "fc",
                               "url": f"SharedMountPoint://localhost{data / 'local'}"},
                              {"name": "nfs" if args.nfs_url else "local2", "zone": "fz", "cluster": "fc",
                               "url": args.nfs_url or f"SharedMountPoint://localhost{data / 'local2'}"}],
            "image_stores": [{"name": "images", "zone": "fz", "provider": "Filesystem", "url": f"file://{data / 'images'}"}],
            "templates": [{"name": "tiny", "zone": "fz", "file": args.template, "ostype": "Other Linux (64-bit)"}]})
    ms.start()
    print(f"KEY {ms.admin.api_key}\nSECRET {ms.admin_secret}\nENDPOINT {ms.endpoint}", flush=True)
    stop.wait()
    ms.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
