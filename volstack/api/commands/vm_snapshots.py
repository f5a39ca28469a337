"""VM snapshot commands: createVMSnapshot, listVMSnapshot, revertToVMSnapshot, deleteVMSnapshot.

Their jobs serialize with the VM's own (sync key VirtualMachine:<uuid>), as CloudStack queues VM snapshot work on
the VM's work queue: a stop, a migration or another VM snapshot operation never runs under them.
"""
from volstack.api.commands.common import list_query, lst, obj
from volstack.api.commands.vms import VIRTUALMACHINE
from volstack.api.commands.volumes import _owner_fields
from volstack.api.registry import (API, BOOLEAN, LIST, MAP, OWNER_LIST_PARAMS, STRING, USER, UUID, Field as F,
                                   Param as P, Success, View)
from volstack.api.views import _a, _date, _ref, tags_field
from volstack.db import models as m
from volstack.db import storage_models as sm
from volstack.db.vm_snapshot_models import VMSnapshot
from volstack.services import vm_snapshots


def _parent(attr):
    return lambda r, lk: lk.attr(VMSnapshot, r.parent_id, attr)


VMSNAPSHOT = View("vmsnapshot", [
    F("id", "the ID of the vm snapshot", _a("uuid")),
    F("name", "the name of the vm snapshot", _a("name")),
    F("displayname", "the display name of the vm snapshot", _a("display_name")),
    F("description", "the description of the vm snapshot", _a("description")),
    F("state", "the state of the vm snapshot", _a("state")),
    F("type", "VM Snapshot type: Disk or DiskAndMemory", _a("snapshot_type")),
    F("current", "indicates if this is current snapshot", _a("current"), "boolean"),
    F("parent", "the parent ID of the vm snapshot", _parent("uuid")),
    F("parentName", "the parent displayName of the vm snapshot", _parent("display_name")),
    F("virtualmachineid", "the vm ID of the vm snapshot", _ref(sm.VirtualMachine, "vm_id")),
    F("virtualmachinename", "the vm name of the vm snapshot", _ref(sm.VirtualMachine, "vm_id", "name")),
    F("hypervisor", "the type of hypervisor on which snapshot is stored", _a("hypervisor")),
    F("zoneid", "the Zone ID of the vm snapshot", _ref(m.Zone, "zone_id")),
    F("zonename", "the Zone name of the vm snapshot", _ref(m.Zone, "zone_id", "name")),
    F("status", "why the last operation on the vm snapshot failed", _a("error")),
    F("created", "the create date of the vm snapshot", _date("created"), "date"),
    tags_field("VMSnapshot"),
    *_owner_fields(),
])
VMSNAPSHOT_LIST = View("vmSnapshot", VMSNAPSHOT.fields)     # CloudStack's list key is camelCase, unlike the jobresult


def _vm_of_snapshot(req, p) -> str:
    snap = vm_snapshots.get_vm_snapshot(req.s, req.ctx, p.vmsnapshotid)
    return f"VirtualMachine:{req.s.get(sm.VirtualMachine, snap.vm_id).uuid}"


VMSNAP_JOB = dict(is_async=True, access=USER, instance_type="VmSnapshot", instance_param="vmsnapshotid",
                  sync=lambda req, p, uuid: (_vm_of_snapshot(req, p), None))


@API.command("createVMSnapshot", "Creates a snapshot for a VM: all its disks at one instant, and its memory with "
             "snapshotmemory=true (a Running VM). Every volume must be QCOW2 on a file pool.", [
    P("virtualmachineid", UUID, "The ID of the vm", required=True, entity="VirtualMachine"),
    P("name", STRING, "The display name of the snapshot (unique for the VM)"),
    P("description", STRING, "The description of the snapshot"),
    P("snapshotmemory", BOOLEAN, "snapshot memory if true"),
    P("quiescevm", BOOLEAN, "quiesce vm if true: refused (needs the QEMU guest agent, which volstack does not drive)"),
], view=VMSNAPSHOT, is_async=True, access=USER, instance_type="VmSnapshot", instance_param="id",
   sync=lambda req, p, uuid: (f"VirtualMachine:{p.virtualmachineid}", None),
   prepare=lambda req, p: vm_snapshots.create(req.s, req.ctx, virtualmachineid=p.virtualmachineid, name=p.name,
                                              description=p.description, snapshotmemory=bool(p.snapshotmemory),
                                              quiescevm=bool(p.quiescevm)).uuid)
def create_vm_snapshot(req, p):
    snap = vm_snapshots.get_vm_snapshot(req.s, req.ctx, p.id)
    return obj(req, VMSNAPSHOT, vm_snapshots.take(req.s, req.ctx, snap, req.progress))


@API.command("listVMSnapshot", "List virtual machine snapshot by conditions", [
    P("vmsnapshotid", UUID, "The ID of the VM snapshot", entity="VmSnapshot"),
    P("vmsnapshotids", LIST, "the IDs of the vm snapshots, mutually exclusive with vmsnapshotid", entity="VmSnapshot"),
    P("virtualmachineid", UUID, "the ID of the vm", entity="VirtualMachine"),
    P("name", STRING, "lists snapshot by snapshot name or display name"),
    P("state", STRING, "state of the virtual machine snapshot"),
    P("tags", MAP, "List resources by tags (key/value pairs): tags[0].key=k&tags[0].value=v; any pair matches"),
    *OWNER_LIST_PARAMS,
], view=VMSNAPSHOT_LIST, is_list=True, access=USER)
def list_vm_snapshot(req, p):
    return lst(req, VMSNAPSHOT_LIST, vm_snapshots.list_vm_snapshots(
        req.s, req.ctx, list_query(req, p), **{k: p.get(k) for k in ("vmsnapshotid", "vmsnapshotids",
                                                                       "virtualmachineid", "name", "state", "tags")}))


@API.command("revertToVMSnapshot", "Revert VM from a vmsnapshot: a Running VM to a DiskAndMemory snapshot (it goes "
             "on running from that state), a Stopped VM to a Disk snapshot.", [
    P("vmsnapshotid", UUID, "The ID of the vm snapshot", required=True, entity="VmSnapshot"),
], view=VIRTUALMACHINE, **VMSNAP_JOB)
def revert_to_vm_snapshot(req, p):
    snap = vm_snapshots.get_vm_snapshot(req.s, req.ctx, p.vmsnapshotid)
    return obj(req, VIRTUALMACHINE, vm_snapshots.revert(req.s, req.ctx, snap, req.progress))


@API.command("deleteVMSnapshot", "Deletes a vmsnapshot: it leaves every disk of the VM; its children take its "
             "parent.", [
    P("vmsnapshotid", UUID, "The ID of the VM snapshot", required=True, entity="VmSnapshot"),
], response_key="success", **VMSNAP_JOB)
def delete_vm_snapshot(req, p):
    vm_snapshots.delete(req.s, req.ctx, vm_snapshots.get_vm_snapshot(req.s, req.ctx, p.vmsnapshotid))
    return Success()

