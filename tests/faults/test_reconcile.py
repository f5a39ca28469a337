"""Issue 12, seen points 1 and 2: the database and the hosts never disagree about who runs and holds which disk,
and no job leaves a VM or volume in a transitional state. Real `volstack agent` processes with real QEMU guests
(paused ones: no OS is needed to hold disks open), SharedMountPoint pools; the disk sets are read from QEMU."""
import contextlib

import pytest
from cs import CloudStackApiException
from sqlalchemy import select, update

from agentproc import AgentProcess, wait_until
from helpers import wait_job
from support import add_datacenter, client, start_server
from volstack.agent.qmp import Qmp, QmpError
from volstack.db.storage_models import VirtualMachine, Volume
from volstack.services import reconcile


def _qemu_serials(monitor: str) -> set[str]:
    """The disks QEMU itself has (query-block through the guest's second monitor), by serial; the CD drive every
    guest has and drives without a medium are left out."""
    with Qmp(monitor) as q:
        out = set()
        for b in q.execute("query-block"):
            if b["qdev"] == "cd0" or not b.get("inserted"):
                continue
            dev = b["qdev"].split("/")[3] if b["qdev"].startswith("/machine") else b["qdev"]
            try:
                out.add(q.execute("qom-get", {"path": f"/machine/peripheral/{dev}", "property": "serial"}))
            except QmpError:          # being unplugged right now
                continue
        return out


def _serial(vol) -> str:
    return vol["id"].replace("-", "")[:20]


@contextlib.contextmanager
def _kvm(tmp_path, host_check: float):
    """A management server (host check every host_check s) with one real QEMU agent, two SharedMountPoint pools
    and offerings."""
    ms = start_server(f"sqlite:///{tmp_path / 'volstack.db'}", tmp_path, host_check_seconds=host_check,
                      settle_after_seconds=3600)
    agent = AgentProcess(tmp_path / "agent", name="kvm1").start()
    try:
        api = client(ms)
        dc = add_datacenter(api, "z", "p", "c", [agent])
        pools = []
        for name in ("primary", "primary2"):
            (tmp_path / name).mkdir()
            pools.append(api.createStoragePool(name=name, url=f"SharedMountPoint://localhost{tmp_path / name}",
                                               **dc["at"])["storagepool"])
        so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=128, rootdisksize=1,
                                       displaytext="s")["serviceoffering"]
        do = api.createDiskOffering(name="d", disksize=1, displaytext="d")["diskoffering"]
        yield dict(api=api, ms=ms, agent=agent, zone=dc["zone"], host=dc["host"], pools=pools, so=so, do=do,
                   tmp=tmp_path)
    finally:
        agent.kill_guests()
        agent.stop()
        ms.stop()


@pytest.fixture
def kvm(tmp_path):
    """No periodic host check after the first: the tests drive reconciliation passes themselves."""
    with _kvm(tmp_path, 3600) as k:
        yield k


@pytest.fixture
def kvm_checked(tmp_path):
    """The host check (and so reconciliation) every 0.3 s."""
    with _kvm(tmp_path, 0.3) as k:
        yield k


def _deploy(k, name):
    return k["api"].deployVirtualMachine(zoneid=k["zone"]["id"], serviceofferingid=k["so"]["id"],
                                         name=name)["virtualmachine"]


def _volume(k, name):
    return k["api"].createVolume(name=name, zoneid=k["zone"]["id"], diskofferingid=k["do"]["id"])["volume"]


def _guest(k, vm_id):
    return next((g for g in k["agent"].client.call("vm_list")["vms"] if g["name"] == vm_id), None)


def _state(k, vm_id):
    return k["api"].listVirtualMachines(id=vm_id)["virtualmachine"][0]["state"]


def _events(k, kind):
    return [e["description"] for e in k["api"].listEvents(type=kind, listall=True).get("event", [])]


def _stale_guest(k, name):
    """Seen point 1's start: the agent is down while stopVirtualMachine forced=true succeeds, so the guest lives on."""
    api, agent = k["api"], k["agent"]
    vm = _deploy(k, name)
    listen = agent.url.removeprefix("http://").rstrip("/")
    agent.stop()
    assert api.stopVirtualMachine(id=vm["id"], forced=True)["virtualmachine"]["state"] == "Stopped"
    agent.start(listen=listen)
    assert _guest(k, vm["id"])["state"] == "Running"        # the QEMU outlived the "stop"
    return vm


def test_a_start_never_hands_back_a_stale_guest_with_other_disks(kvm):
    """Repro of seen point 1: attach a volume to the "Stopped" VM whose guest still runs, start it. Before the fix
    the agent handed back the old guest without the new disk, and a live migration of the volume then failed
    with "VM … has no disk with serial …"."""
    k, api = kvm, kvm["api"]
    vm = _stale_guest(k, "stale")
    vol = api.attachVolume(id=_volume(k, "data")["id"], virtualmachineid=vm["id"])["volume"]
    assert api.startVirtualMachine(id=vm["id"])["virtualmachine"]["state"] == "Running"
    guest = _guest(k, vm["id"])
    assert _serial(vol) in _qemu_serials(guest["monitor"])      # before the fix: the old guest, without it
    assert _serial(vol) in {i["serial"] for i in guest["images"]}
    assert any("was still running an earlier guest" in d and "stopped before the start" in d
               for d in _events(k, "VM.STOP"))
    vol = api.listVolumes(id=vol["id"])["volume"][0]
    dest = next(p["id"] for p in k["pools"] if p["id"] != vol["storageid"])
    moved = api.migrateVolume(volumeid=vol["id"], storageid=dest, livemigrate=True)["volume"]
    assert moved["storageid"] == dest


def test_a_start_adopts_a_running_guest_only_with_exactly_the_recorded_disks(kvm):
    k, api = kvm, kvm["api"]
    vm = _stale_guest(k, "same")
    pid = k["agent"].guest_pids()
    assert api.startVirtualMachine(id=vm["id"])["virtualmachine"]["state"] == "Running"
    assert k["agent"].guest_pids() == pid          # the same QEMU: nothing changed, nothing restarted
    assert any("the guest was adopted, not restarted" in d for d in _events(k, "VM.START"))


def _host_pass(k, submit=None):
    """One reconciliation pass over the host, as the host check runs it (submit=None: only look and record)."""
    from volstack.api.commands.vms import reconcile_submitter
    from volstack.db.models import Host
    with k["ms"].db.session(readonly=True) as s:
        host = s.scalars(select(Host)).one()
    found = reconcile.reconcile_host(k["ms"].db, host, reconcile_submitter(k["ms"].jobs) if submit else
                                     lambda s, name, h: None)
    k["ms"].jobs.wake()
    return found


def test_reconciliation_stops_a_guest_the_database_says_destroyed_and_guards_its_disk(kvm):
    """The reconciler's rule for seen point 1, and the guard on images a guest holds: while the stale guest of a
    destroyed VM holds its data disk, the disk cannot be attached to another VM (two writers) nor deleted."""
    k, api = kvm, kvm["api"]
    vm = _deploy(k, "gone")
    vol = api.attachVolume(id=_volume(k, "held")["id"], virtualmachineid=vm["id"])["volume"]
    other = _deploy(k, "other")
    api.stopVirtualMachine(id=other["id"])
    listen = k["agent"].url.removeprefix("http://").rstrip("/")
    k["agent"].stop()
    api.destroyVirtualMachine(id=vm["id"])          # a forced stop inside: the agent is down, the guest lives on
    k["agent"].start(listen=listen)
    assert _guest(k, vm["id"])["state"] == "Running"
    assert api.listVolumes(id=vol["id"])["volume"][0].get("virtualmachineid") is None   # detached in the database
    assert _host_pass(k) == [vm["id"]]              # looked, recorded the host's open images, acted on nothing
    for call, what in ((lambda: api.attachVolume(id=vol["id"], virtualmachineid=other["id"]), "attach"),
                       (lambda: api.deleteVolume(id=vol["id"]), "delete")):
        with pytest.raises(CloudStackApiException) as e:
            call()
        err = e.value.error
        assert err["errorcode"] == 536, err
        assert f"Cannot {what} volume held: its image is open in VM gone (Destroyed in the database) on host " \
               "kvm1" in err["errortext"]
    _host_pass(k, submit=True)
    wait_until("the reconciler's event", lambda: any(
        "VM gone was running on host kvm1" in d and "the database records the VM Destroyed" in d
        and "reconciliation: stop the guest" in d for d in _events(k, "VM.STOP")), timeout=30)
    assert _guest(k, vm["id"])["state"] == "Stopped"
    assert api.attachVolume(id=vol["id"], virtualmachineid=other["id"])["volume"]["virtualmachineid"] == other["id"]


def _open_images(k):
    with k["ms"].db.session(readonly=True) as s:
        from volstack.db.models import Host
        return any((h.details or {}).get("open_images") for h in s.scalars(select(Host)))


def test_reconciliation_detaches_a_disk_the_database_does_not_record_and_plugs_a_missing_one(kvm_checked):
    """An attach whose job died after the hot-plug, and a detach whose record was lost: the guest's disk set is
    brought back to the database's, each with an event."""
    k, api, agent = kvm_checked, kvm_checked["api"], kvm_checked["agent"].client
    vm = _deploy(k, "disks")
    kept = api.attachVolume(id=_volume(k, "kept")["id"], virtualmachineid=vm["id"])["volume"]
    loose = api.attachVolume(id=_volume(k, "loose")["id"], virtualmachineid=vm["id"])["volume"]
    loose = api.detachVolume(id=loose["id"])["volume"]
    from helpers import pool_spec
    spec = pool_spec(k["ms"], loose["storageid"])
    agent.call("disk_attach", vm=vm["id"], disk={"pool": spec, "name": loose["path"], "format": "qcow2",
                                                 "serial": _serial(loose), "device_id": 5})
    agent.call("disk_detach", vm=vm["id"], serial=_serial(kept))
    monitor = _guest(k, vm["id"])["monitor"]
    wait_until("the guest's disks to match the database",
               lambda: _qemu_serials(monitor) == {_serial(v) for v in api.listVolumes(
                   virtualmachineid=vm["id"])["volume"]}, timeout=30)
    assert _serial(kept) in _qemu_serials(monitor) and _serial(loose) not in _qemu_serials(monitor)
    assert any("volume loose plugged in although the database records it detached" in d
               for d in _events(k, "VOLUME.DETACH"))
    assert any("Volume kept is attached to VM disks in the database but the guest" in d and "hot-plugged" in d
               for d in _events(k, "VOLUME.ATTACH"))


def test_an_interrupted_start_is_adopted_when_the_guest_has_the_recorded_disks(kvm_checked):
    """The management server died after the start reached the agent: the record says Starting, no job works on it,
    the host runs the guest with exactly the recorded disks, so the VM is Running there (not started again)."""
    k = kvm_checked
    vm = _deploy(k, "adopt")
    pids = k["agent"].guest_pids()
    with k["ms"].db.session() as s:
        s.execute(update(VirtualMachine).where(VirtualMachine.uuid == vm["id"]).values(state="Starting", host_id=None))
    wait_until("the VM to be adopted", lambda: _state(k, vm["id"]) == "Running", timeout=30)
    assert k["agent"].guest_pids() == pids
    assert any("VM adopt was Starting with no job working on it" in d for d in _events(k, "VM.START"))


def test_a_failed_start_leaves_the_vm_stopped_and_its_new_volume_allocated(kvm):
    """Repro of seen point 2: a stopped VM with a never-used (Allocated) data volume, the agent down. The image
    creation commits the VM's Starting mid-job; before the fix the job's rollback left the VM Starting for ever
    (start, stop and destroy all refused)."""
    k, api = kvm, kvm["api"]
    vm = _deploy(k, "stuck")
    api.stopVirtualMachine(id=vm["id"])
    vol = api.attachVolume(id=_volume(k, "fresh")["id"], virtualmachineid=vm["id"])["volume"]
    assert vol["state"] == "Allocated"
    listen = k["agent"].url.removeprefix("http://").rstrip("/")
    k["agent"].stop()
    raw = client(k["ms"], fetch_result=False)
    job = wait_job(k["ms"], raw.startVirtualMachine(id=vm["id"])["jobid"])
    assert job["jobstatus"] == 2 and job["jobresult"]["errorcode"] == 533, job
    assert "could not start on any host" in job["jobresult"]["errortext"]
    assert _state(k, vm["id"]) == "Stopped"
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Allocated"
    # deployVirtualMachine while the agent is down: the same path, the same outcome
    job = wait_job(k["ms"], raw.deployVirtualMachine(zoneid=k["zone"]["id"], serviceofferingid=k["so"]["id"],
                                                     name="late")["jobid"])
    assert job["jobstatus"] == 2 and job["jobresult"]["errorcode"] == 533, job
    late = api.listVirtualMachines(name="late")["virtualmachine"][0]
    assert late["state"] == "Stopped"
    assert api.listVolumes(virtualmachineid=late["id"])["volume"][0]["state"] == "Allocated"
    k["agent"].start(listen=listen)
    assert api.startVirtualMachine(id=vm["id"])["virtualmachine"]["state"] == "Running"
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Ready"


# ---------------------------------------------------------------- simulator level: the rules and the sweep

@pytest.fixture
def sim(db_url, tmp_path):
    ms = start_server(db_url, tmp_path, host_check_seconds=3600, settle_after_seconds=0.5)
    agent = AgentProcess(tmp_path / "agent", hypervisor="simulator", name="sim1").start()
    try:
        api = client(ms)
        dc = add_datacenter(api, "z", "p", "c", [agent])
        (tmp_path / "primary").mkdir()
        api.createStoragePool(name="primary", url=f"SharedMountPoint://localhost{tmp_path / 'primary'}", **dc["at"])
        so = api.createServiceOffering(name="s", cpunumber=1, cpuspeed=500, memory=128, rootdisksize=1,
                                       displaytext="s")["serviceoffering"]
        yield dict(api=api, ms=ms, agent=agent, zone=dc["zone"], so=so)
    finally:
        agent.stop()
        ms.stop()


def test_the_sweep_settles_objects_left_transitional_with_no_job(sim):
    """Anything that still slips through (here: rows put in transitional states by hand) is settled after the
    bound, with the reason; a VM whose host does not run it goes back to Stopped, a volume to its stable state."""
    api, ms = sim["api"], sim["ms"]
    vm = _deploy(sim, "swept")
    api.stopVirtualMachine(id=vm["id"])
    root = api.listVolumes(virtualmachineid=vm["id"])["volume"][0]
    gone = _deploy(sim, "half-expunged")
    api.destroyVirtualMachine(id=gone["id"])
    with ms.db.session() as s:
        s.execute(update(VirtualMachine).where(VirtualMachine.uuid == vm["id"]).values(state="Starting"))
        s.execute(update(Volume).where(Volume.uuid == root["id"]).values(state="Resizing"))
        s.execute(update(VirtualMachine).where(VirtualMachine.uuid == gone["id"]).values(state="Expunging"))
    wait_until("the sweep", lambda: _state(sim, vm["id"]) == "Stopped" and _state(sim, gone["id"]) == "Destroyed"
               and api.listVolumes(id=root["id"])["volume"][0]["state"] == "Ready", timeout=30)
    recovered = _events(sim, "VM.RECOVER") + _events(sim, "VOLUME.RECOVER")
    assert any("it was Starting for" in d and "with no job working on it" in d for d in recovered)
    assert any("it was Expunging for" in d and "Destroyed again" in d for d in recovered), recovered
    assert any("it was Resizing for" in d for d in recovered)
    assert api.startVirtualMachine(id=vm["id"])["virtualmachine"]["state"] == "Running"


def test_reconcile_pass_submits_one_task_per_difference_and_none_while_a_job_works(sim):
    api, ms = sim["api"], sim["ms"]
    vm = _deploy(sim, "pass")
    with ms.db.session() as s:                        # the database believes it stopped; the host runs it
        s.execute(update(VirtualMachine).where(VirtualMachine.uuid == vm["id"]).values(state="Stopped", host_id=None))
    from volstack.db.models import Host
    with ms.db.session(readonly=True) as s:
        host = s.scalars(select(Host)).one()
    submitted = []
    assert reconcile.reconcile_host(ms.db, host, lambda s, name, h: submitted.append(name)) == [vm["id"]]
    with ms.db.session(readonly=True) as s:
        assert (s.get(Host, host.id).details or {})["open_images"]
    # a pending job on the VM: left to it
    from volstack.services.context import system_context
    with ms.db.session() as s:
        ms.jobs.submit(s, cmd="stopVirtualMachine", params={}, ctx=system_context(),
                       instance_type="VirtualMachine", instance_uuid=vm["id"], sync_key=f"VirtualMachine:{vm['id']}")
        s.flush()
        assert reconcile.busy(s, [vm["id"]], reconcile.utcnow())
        s.rollback()


def test_a_guest_no_vm_record_owns_is_stopped_and_removed_from_its_host(sim):
    """A guest left by an expunged VM (or unknown to the database) holds its disk: reconciliation removes it."""
    ms, agent = sim["ms"], sim["agent"].client
    from volstack.api.commands.vms import reconcile_submitter
    from volstack.db.models import Host
    from volstack.db.storage_models import StoragePool
    from helpers import pool_spec
    with ms.db.session(readonly=True) as s:
        host = s.scalars(select(Host)).one()
        pool = s.scalars(select(StoragePool)).one()
    spec = pool_spec(ms, pool.uuid)
    agent.call("volume_create", pool=spec, name="stray", size=1 << 20, format="qcow2")
    name = "6f1e0c1a-0000-4000-8000-00000000abcd"
    agent.call("vm_start", name=name, uuid=name, memory_mb=64, cpus=1,
               disks=[{"pool": spec, "name": "stray", "format": "qcow2", "serial": "STRAY", "device_id": 0}])
    assert reconcile.reconcile_host(ms.db, host, reconcile_submitter(ms.jobs)) == [name]
    ms.jobs.wake()
    wait_until("the reconciler's event", lambda: any(
        f"guest {name} was running on host sim1 with disks STRAY although no VM record owns it" in d
        and "stop the guest and remove it from the host" in d for d in _events(sim, "VM.STOP")))
    assert all(g["name"] != name for g in agent.call("vm_list")["vms"])
