"""VM power-state sync: the host heartbeat corrects a VM the database believes Running but its host does not
run (here: a host whose guests vanished across an agent restart, as after a host reboot)."""
import json

from agentproc import AgentProcess, wait_until
from support import add_datacenter, client, start_server


def test_a_vm_its_host_no_longer_runs_becomes_stopped_with_an_event(tmp_path):
    ms = start_server(f"sqlite:///{tmp_path / 'volstack.db'}", tmp_path, host_check_seconds=0.2)
    agent = AgentProcess(tmp_path / "agent", hypervisor="simulator", name="kvm1").start()
    try:
        api = client(ms)
        dc = add_datacenter(api, "z", "p", "c", [agent])
        zone, pod, cl = dc["zone"], dc["pod"], dc["cluster"]
        (tmp_path / "primary").mkdir()
        api.createStoragePool(name="primary", url=f"SharedMountPoint://localhost{tmp_path / 'primary'}",
                              zoneid=zone["id"], podid=pod["id"], clusterid=cl["id"])
        so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=128, rootdisksize=1,
                                       displaytext="s")["serviceoffering"]
        keep, lose = (api.deployVirtualMachine(zoneid=zone["id"], serviceofferingid=so["id"], name=n)["virtualmachine"]
                      for n in ("keep", "lose"))
        assert keep["state"] == lose["state"] == "Running"

        listen = agent.url.removeprefix("http://").rstrip("/")
        agent.stop()                                  # the host "reboots": one guest does not come back
        state = tmp_path / "agent" / "simulator.json"
        vms = json.loads(state.read_text())
        del vms[lose["id"]]
        state.write_text(json.dumps(vms))
        agent.start(listen=listen)   # where the management server knows it

        stopped = wait_until("the heartbeat to stop the lost VM",
                             lambda: api.listVirtualMachines(id=lose["id"])["virtualmachine"][0]["state"] == "Stopped")
        assert stopped
        assert api.listVirtualMachines(id=keep["id"])["virtualmachine"][0]["state"] == "Running"
        events = [e for e in api.listEvents(type="VM.STOP").get("event", []) if "lose" in e["description"]]
        assert events and "no longer running on host kvm1" in events[0]["description"]
        # it starts again normally, on the same host
        assert api.startVirtualMachine(id=lose["id"])["virtualmachine"]["state"] == "Running"
    finally:
        agent.stop()
        ms.stop()
