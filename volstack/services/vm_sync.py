"""VM power-state sync: a host's own list of guests corrects what the database believes.

CloudStack's agents report VM power states and the management server reconciles them. volstack's heartbeat
asks each live host for its guests; a VM recorded Running on a host that no longer runs it (its QEMU died,
the host rebooted, a migration lost the source) becomes Stopped with an event saying why, instead of
staying Running forever. A VM with a job pending or running is left to that job.
"""
from sqlalchemy import or_, select

from volstack.db.models import AsyncJob, Host, utcnow
from volstack.db.storage_models import VirtualMachine
from volstack.errors import CloudError, ResourceInUse
from volstack.drivers.hosts import channel
from volstack.services import events
from volstack.services.lifecycle import VM


def _recorded_running(s, host_id: int) -> set[str]:
    return set(s.scalars(select(VirtualMachine.uuid).where(VirtualMachine.host_id == host_id,
                                                           VirtualMachine.state == "Running",
                                                           VirtualMachine.removed.is_(None))))


def sync_host(db, ctx, host: Host) -> list[str]:
    """Returns the uuids of the VMs marked Stopped."""
    # Read the database before asking the host: a VM that was already Running before the host's answer
    # and is missing from it really stopped (one started meanwhile is not in this set, and one whose job
    # finished meanwhile — a stop and a start — is left alone below).
    asked = utcnow()
    with db.session(readonly=True) as s:
        before = _recorded_running(s, host.id)
    if not before:
        return []
    try:
        reported = channel(host).call("vm_list")["vms"]
    except CloudError:
        return []                       # the heartbeat decides about an unreachable host
    alive = {v["name"] for v in reported if v["state"] in ("Running", "Incoming")}
    gone = before - alive
    if not gone:
        return []
    stopped = []
    with db.session() as s:
        busy = set(s.scalars(select(AsyncJob.instance_uuid).where(
            AsyncJob.instance_type == "VirtualMachine", or_(AsyncJob.status == 0, AsyncJob.completed >= asked))))
        for uuid in sorted((gone & _recorded_running(s, host.id)) - busy):
            vm = s.scalar(select(VirtualMachine).where(VirtualMachine.uuid == uuid))
            try:
                VM.fire(s, vm, "AgentReportStopped", host_id=None, last_host_id=host.id)
            except ResourceInUse:        # moved meanwhile (a job, another server's sync): nothing was written
                continue
            events.record(s, ctx, "VM.STOP", f"VM {vm.name} is no longer running on host {host.name} (the host "
                          "reports it powered off); recorded as Stopped", level="WARN",
                          resource_type="VirtualMachine", resource_uuid=vm.uuid)
            stopped.append(uuid)
    return stopped
