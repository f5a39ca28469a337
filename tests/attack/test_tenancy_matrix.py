"""Tenant isolation, generated from the command registry: every command × each non-root role × another owner's
object. bob (a plain user of attack-d2) owns one object of every kind; alice (a plain user of attack-d1) and
dadmin (the domain admin of attack-d1, a sibling of d2) aim every uuid parameter of every command they may call at
them. Expected: 531 or 431, and nothing of bob's changed; a list command never shows bob's object. Commands a role
may not call answer 432. A command added later is in the matrix by its declaration alone."""
import json

import pytest

from volstack.api import commands  # noqa: F401  (declares the commands)
from volstack.api.registry import API

from attackkit import builtin_template, offering, zone_id

# uuid parameters without a declared entity that still name an object
UNDECLARED = {("queryAsyncJobResult", "jobid"): "AsyncJob", ("listTemplates", "id"): "Template",
              ("listTemplates", "ids"): "Template", ("listIsos", "id"): "Iso", ("listIsos", "ids"): "Iso"}
# kinds of objects an account owns (or a domain scopes): the targets
OWNED = ("Volume", "VirtualMachine", "Snapshot", "Template", "Iso", "VmSnapshot", "SnapshotPolicy", "AsyncJob",
         "User", "Account", "Domain", "Event", "DiskOffering", "ServiceOffering")
# plausible values for the other required parameters, so that a refusal comes from the access check
VALUES = {"mode": "HTTP_DOWNLOAD", "intervaltype": "DAILY", "schedule": "30:02", "timezone": "UTC", "maxsnaps": "1",
          "templatefilter": "all", "isofilter": "all", "url": "http://127.0.0.1:9/m.qcow2", "format": "QCOW2",
          "hypervisor": "KVM", "lock": "false", "resourcetype": "2", "password": "pw-matrix", "account": "alice",
          "op": "add", "accounts": "alice", "size": "1"}
SKIP = {"login", "logout"}      # no object: tested in test_logins


def _entity(cmd, p):
    return p.entity or UNDECLARED.get((cmd.name, p.name))


def _targets(cmd):
    return [p for p in cmd.params if _entity(cmd, p) in OWNED]


def _cases():
    """(command, role) for every command: refused (432) when the role may not call it; else aimed at bob's objects
    through each uuid parameter the role may pass (list commands also with none). Commands that name no owned
    object and list nothing (listCapabilities, listApis, ...) have no case."""
    out = []
    for cmd in sorted(API.commands.values(), key=lambda c: c.name):
        if cmd.name in SKIP:
            continue
        for role, account_type in (("alice", 0), ("dadmin", 2)):
            if cmd.allowed(account_type) and not cmd.is_list and not any(
                    p.allowed(account_type) for p in _targets(cmd)):
                continue
            out.append(pytest.param(cmd.name, role, id=f"{cmd.name}-{role}"))
    return out


@pytest.fixture(scope="module")
def estate(stack, tenants):
    """bob's objects of every kind (the victim) and alice's (fillers for the other parameters)."""
    bob, alice, root = tenants.bob, tenants.alice, stack.root
    zone, tiny = zone_id(stack), builtin_template(stack)
    so = offering(stack, "service", "Small Instance")
    b = {"Domain": bob.domain["id"], "Account": bob.account["id"], "User": bob.user["id"]}
    vm = bob.api.deployVirtualMachine(zoneid=zone, templateid=tiny, serviceofferingid=so, name="bob-vm")
    b["VirtualMachine"] = vm["virtualmachine"]["id"]
    root_vol = bob.api.listVolumes(virtualmachineid=b["VirtualMachine"], type="ROOT")["volume"][0]["id"]
    b["Volume"] = bob.api.createVolume(name="bob-data", zoneid=zone, diskofferingid=offering(stack, "disk", "Custom"),
                                       size=1)["volume"]["id"]
    b["Snapshot"] = bob.api.createSnapshot(volumeid=root_vol)["snapshot"]["id"]
    b["AsyncJob"] = bob.api.listAsyncJobs()["asyncjobs"][0]["jobid"]
    b["VmSnapshot"] = bob.api.createVMSnapshot(virtualmachineid=b["VirtualMachine"],
                                               snapshotmemory=False)["vmsnapshot"]["id"]
    b["SnapshotPolicy"] = bob.api.createSnapshotPolicy(volumeid=root_vol, intervaltype="DAILY", schedule="30:02",
                                                       timezone="UTC", maxsnaps=1)["snapshotpolicy"]["id"]
    b["Template"] = bob.api.registerTemplate(name="bob-tmpl", displaytext="b", url="http://127.0.0.1:9/b.qcow2",
                                             format="QCOW2", hypervisor="KVM", zoneid=zone)["template"][0]["id"]
    b["Iso"] = bob.api.registerIso(name="bob-iso", displaytext="b", url="http://127.0.0.1:9/b.iso",
                                   zoneid=zone)["iso"][0]["id"]
    b["Event"] = bob.api.listEvents()["event"][0]["id"]
    b["DiskOffering"] = root.createDiskOffering(name="bob-only-disk", displaytext="d2", disksize=1,
                                                domainid=bob.domain["id"])["diskoffering"]["id"]
    b["ServiceOffering"] = root.createServiceOffering(name="bob-only-so", displaytext="d2", cpunumber=1, cpuspeed=500,
                                                      memory=256, domainid=bob.domain["id"])["serviceoffering"]["id"]
    a = {"Zone": zone, "Template": tiny, "ServiceOffering": so, "DiskOffering": offering(stack, "disk", "Custom"),
         "Domain": alice.domain["id"], "Account": alice.account["id"], "User": alice.user["id"],
         "VirtualMachine": alice.api.deployVirtualMachine(zoneid=zone, templateid=tiny, serviceofferingid=so,
                                                          name="alice-matrix", startvm=False)["virtualmachine"]["id"],
         "Volume": alice.api.createVolume(name="alice-matrix", zoneid=zone, size=1,
                                          diskofferingid=offering(stack, "disk", "Custom"))["volume"]["id"],
         "StoragePool": root.listStoragePools()["storagepool"][0]["id"],
         "Host": root.listHosts()["host"][0]["id"]}
    before = _state(stack, b)
    yield {"bob": b, "alice": a, "before": before}


def _state(stack, b) -> str:
    """Everything of bob's as the root admin sees it, for 'nothing changed'."""
    r = stack.root
    listed = [r.listVirtualMachines(id=b["VirtualMachine"], listall=True), r.listVolumes(account="bob",
              domainid=b["Domain"], listall=True), r.listSnapshots(id=b["Snapshot"], listall=True),
              r.listVMSnapshot(vmsnapshotid=b["VmSnapshot"], listall=True),
              r.listSnapshotPolicies(id=b["SnapshotPolicy"], listall=True),
              r.listTemplates(templatefilter="all", id=b["Template"], listall=True),
              r.listIsos(isofilter="all", id=b["Iso"], listall=True),
              r.listUsers(id=b["User"], listall=True), r.listAccounts(id=b["Account"], listall=True),
              r.listDomains(id=b["Domain"], listall=True), r.listDiskOfferings(id=b["DiskOffering"]),
              r.listServiceOfferings(id=b["ServiceOffering"])]
    volatile = ("lastpinged", "jobstatus", "physicalsize", "diskiopstotal", "diskioread", "diskiowrite",
                "diskkbsread", "diskkbswrite", "utilization", "eventtotal")
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in volatile}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return json.dumps(strip(listed), sort_keys=True)


def _fill(cmd, p, estate):
    ent = _entity(cmd, p)
    if ent in estate["alice"]:
        v = estate["alice"][ent]
    elif p.name in VALUES:
        v = VALUES[p.name]
    elif p.type in ("integer", "long", "short"):
        v = "1"
    elif p.type == "boolean":
        v = "false"
    else:
        v = f"matrix-{cmd.name.lower()}"
    return v


@pytest.mark.parametrize("command,role", _cases())
def test_isolation(stack, tenants, estate, command, role):
    cmd, who = API.commands[command], getattr(tenants, role)
    account_type = 0 if role == "alice" else 2
    if not cmd.allowed(account_type):
        status, body = stack.call(who, command)
        assert status == 432 and "does not exist or it is not available" in body.get("errortext", ""), (status, body)
        return
    victim = estate["bob"]
    targets = [p for p in _targets(cmd) if p.allowed(account_type)]
    for target in targets or [None]:
        params = {}
        for p in cmd.params:
            if p is target:
                params[p.name] = victim[_entity(cmd, p)]
            elif p.required and p.type != "map":
                params[p.name] = _fill(cmd, p, estate)
        if cmd.is_list:
            params["listall"] = "true"
        status, body = stack.call(who, command, **params)
        text = json.dumps(body)
        if status == 200:
            assert cmd.is_list, f"{command} {params} as {role} worked on bob's object: {text[:400]}"
            leaked = [k for k, v in victim.items() if v in text]
            assert not leaked, f"{command} {params} as {role} shows bob's {leaked}: {text[:400]}"
        else:
            assert status in (431, 531), f"{command} {params} as {role}: {status} {text[:400]}"


def test_nothing_of_bobs_changed(stack, estate):
    assert _state(stack, estate["bob"]) == estate["before"]
