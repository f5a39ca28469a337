"""Helpers shared by the tests: start a management server, make a cs client for it."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_server(db_url, tmp_path, **kw):
    from volstack.management import ManagementServer
    kw.setdefault("heartbeat_seconds", 0.5)
    return ManagementServer(db_url, tmp_path / "volstack.key", port=0, **kw).start()


def client(ms, key=None, secret=None, **kw):
    from cs import CloudStack
    return CloudStack(endpoint=ms.endpoint, key=key or ms.admin.api_key, secret=secret or ms.admin_secret,
                      **{"poll_interval": 0.05, "fetch_result": True, **kw})


def add_datacenter(api, zone: str, pod: str, cluster: str, hosts=()) -> dict:
    """Zone → pod → cluster → hosts, as an operator adds them. A host is a Simulator URL (str) or a started
    AgentProcess (a KVM host, joined with its token). Returns the objects and `at`, the three ids as
    parameters for createStoragePool and the like."""
    kvm = any(not isinstance(h, str) for h in hosts)
    hypervisor = "KVM" if kvm else "Simulator"
    z = api.createZone(name=zone, networktype="Advanced")["zone"]
    p = api.createPod(name=pod, zoneid=z["id"])["pod"]
    c = api.addCluster(clustername=cluster, zoneid=z["id"], podid=p["id"], hypervisor=hypervisor,
                       clustertype="CloudManaged")["cluster"][0]
    at = dict(zoneid=z["id"], podid=p["id"], clusterid=c["id"])
    added = [api.addHost(**at, hypervisor=hypervisor, **(dict(url=h) if isinstance(h, str) else
                                                        dict(url=h.url, username="root", password=h.token)))["host"][0]
             for h in hosts]
    return dict(zone=z, pod=p, cluster=c, hosts=added, host=added[0] if added else None, at=at)


def release_guests(api, vms, agents) -> None:
    """A real-guest fixture's teardown: expunge the VMs a test left (best effort: a test may have removed them, or
    broken the cloud on purpose), then kill what still runs on the hosts and stop their agents."""
    for vm in vms:
        try:
            api.destroyVirtualMachine(id=vm, expunge=True)
        except Exception:
            pass
    for a in agents:
        a.kill_guests()
        a.stop()
