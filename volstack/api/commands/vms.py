"""VM commands, as much as storage needs: deploy, start/stop/reboot, destroy/recover/expunge, migration,
service offering changes, ISOs in the CD drive."""
from volstack.api.commands.common import list_query, lst, obj, page_of
from volstack.api.commands.volumes import _owner_fields, _template_attr
from volstack.api.registry import (API, BOOLEAN, LIST, LONG, MAP, OWNER_LIST_PARAMS, ROOT, STRING, USER, UUID,
                                   Field as F, Param as P, Success, View)
from volstack.api.views import HOST, _a, _date, _ref, tags_field
from volstack.db import models as m
from volstack.db import storage_models as sm
from volstack.services import vms

def _iso_attr(attr):
    from volstack.db.image_models import Template
    return lambda r, lk: lk.attr(Template, r.iso_id, attr)


VIRTUALMACHINE = View("virtualmachine", [
    F("id", "the ID of the virtual machine", _a("uuid")),
    F("name", "the name of the virtual machine", _a("name")),
    F("displayname", "user generated name. The name of the virtual machine is returned if no displayname exists.", _a("display_name")),
    F("state", "the state of the virtual machine", _a("state")),
    F("hypervisor", "the hypervisor on which the template runs", _a("hypervisor")),
    F("zoneid", "the ID of the availability zone for the virtual machine", _ref(m.Zone, "zone_id")),
    F("zonename", "the name of the availability zone for the virtual machine", _ref(m.Zone, "zone_id", "name")),
    F("hostid", "the ID of the host for the virtual machine", _ref(m.Host, "host_id"), access=ROOT),
    F("hostname", "the name of the host for the virtual machine", _ref(m.Host, "host_id", "name"), access=ROOT),
    F("serviceofferingid", "the ID of the service offering of the virtual machine", _ref(sm.ServiceOffering, "service_offering_id")),
    F("serviceofferingname", "the name of the service offering of the virtual machine", _ref(sm.ServiceOffering, "service_offering_id", "name")),
    F("templateid", "the ID of the template for the virtual machine. A -1 is returned if the virtual machine was created from an ISO file.", _template_attr("uuid")),
    F("templatename", "the name of the template for the virtual machine", _template_attr("name")),
    F("templatedisplaytext", " an alternate display text of the template for the virtual machine", _template_attr("display_text")),
    F("isoid", "the ID of the ISO attached to the virtual machine", _iso_attr("uuid")),
    F("isoname", "the name of the ISO attached to the virtual machine", _iso_attr("name")),
    F("isodisplaytext", "an alternate display text of the ISO attached to the virtual machine", _iso_attr("display_text")),
    F("rootdeviceid", "device ID of the root volume", lambda r, lk: 0, "long"),
    F("rootdevicetype", "device type of the root volume", lambda r, lk: "ROOT"),
    F("created", "the date when this virtual machine was created", _date("created"), "date"),
    *_owner_fields(),
    tags_field("UserVm"),
])


@API.command("deployVirtualMachine", "Creates and automatically starts a virtual machine based on a service offering, disk offering, and template.", [
    P("zoneid", UUID, "availability zone for the virtual machine", required=True, entity="Zone"),
    P("serviceofferingid", UUID, "the ID of the service offering for the virtual machine", required=True, entity="ServiceOffering"),
    P("name", STRING, "host name for the virtual machine"),
    P("displayname", STRING, "an optional user generated name for the virtual machine"),
    P("diskofferingid", UUID, "the ID of the disk offering for the virtual machine: a data disk is created from it", entity="DiskOffering"),
    P("size", LONG, "the arbitrary size for the DATADISK volume (GB)"),
    P("rootdisksize", LONG, "Optional field to resize root disk on deploy (GB)"),
    P("hostid", UUID, "destination Host ID to deploy the VM to - parameter available for root admin only", entity="Host", access=ROOT),
    P("hypervisor", STRING, "the hypervisor on which to deploy the virtual machine"),
    P("startvm", BOOLEAN, "true if start vm after creating; defaulted to true if not specified"),
    P("templateid", UUID, "the ID of the template (or ISO) for the virtual machine: the ROOT volume is a linked clone "
      "of the template's copy on the chosen pool", entity="Template"),
    P("details", "map", "root admin only: guest boot details for hosts without templates: details[0].kernel, "
      "details[0].initrd, details[0].append (paths on the host)", access=ROOT),
], view=VIRTUALMACHINE, is_async=True, access=USER, instance_type="VirtualMachine", instance_param="id",
   prepare=lambda req, p: vms.deploy(req.s, req.ctx, zoneid=p.zoneid, serviceofferingid=p.serviceofferingid,
                                     name=p.name, displayname=p.displayname, diskofferingid=p.diskofferingid,
                                     size=p.size, rootdisksize=p.rootdisksize, hostid=p.hostid, startvm=False,
                                     hypervisor=p.hypervisor, details=(p.details or {}).get("0"),
                                     templateid=p.templateid).uuid)
def deploy_vm(req, p):
    vm = vms.get_vm(req.s, req.ctx, p.id)
    if p.startvm is not False:
        vms.start(req.s, req.ctx, vm, p.hostid)
    return obj(req, VIRTUALMACHINE, vm)


VM_JOB = dict(view=VIRTUALMACHINE, is_async=True, access=USER, instance_type="VirtualMachine", instance_param="id")


@API.command("startVirtualMachine", "Starts a virtual machine.", [
    P("id", UUID, "The ID of the virtual machine", required=True, entity="VirtualMachine"),
    P("hostid", UUID, "destination Host ID to deploy the VM to - parameter available for root admin only", entity="Host", access=ROOT),
], **VM_JOB)
def start_vm(req, p):
    return obj(req, VIRTUALMACHINE, vms.start(req.s, req.ctx, vms.get_vm(req.s, req.ctx, p.id), p.hostid))


@API.command("stopVirtualMachine", "Stops a virtual machine.", [
    P("id", UUID, "The ID of the virtual machine", required=True, entity="VirtualMachine"),
    P("forced", BOOLEAN, "Force stop the VM (vm is marked as Stopped even when command fails to be send to the backend, otherwise a force poweroff is attempted)."),
], **VM_JOB)
def stop_vm(req, p):
    return obj(req, VIRTUALMACHINE, vms.stop(req.s, req.ctx, vms.get_vm(req.s, req.ctx, p.id), bool(p.forced)))


@API.command("rebootVirtualMachine", "Reboots a virtual machine.", [
    P("id", UUID, "The ID of the virtual machine", required=True, entity="VirtualMachine")], **VM_JOB)
def reboot_vm(req, p):
    return obj(req, VIRTUALMACHINE, vms.reboot(req.s, req.ctx, vms.get_vm(req.s, req.ctx, p.id)))


@API.command("destroyVirtualMachine", "Destroys a virtual machine. Its root volume goes with it; data volumes are detached unless listed in volumeids.", [
    P("id", UUID, "The ID of the virtual machine", required=True, entity="VirtualMachine"),
    P("expunge", BOOLEAN, "If true is passed, the vm is expunged immediately. False by default."),
    P("volumeids", LIST, "Comma separated list of UUIDs for volumes that will be deleted", entity="Volume"),
], **VM_JOB)
def destroy_vm(req, p):
    return obj(req, VIRTUALMACHINE, vms.destroy(req.s, req.ctx, vms.get_vm(req.s, req.ctx, p.id), bool(p.expunge),
                                                tuple(p.volumeids or ())))


@API.command("recoverVirtualMachine", "Recovers a virtual machine.", [
    P("id", UUID, "The ID of the virtual machine", required=True, entity="VirtualMachine")], view=VIRTUALMACHINE, access=USER)
def recover_vm(req, p):
    return obj(req, VIRTUALMACHINE, vms.recover(req.s, req.ctx, vms.get_vm(req.s, req.ctx, p.id)))


@API.command("expungeVirtualMachine", "Expunge a virtual machine. Once expunged, it cannot be recoverd.", [
    P("id", UUID, "The ID of the virtual machine", required=True, entity="VirtualMachine")],
    response_key="success", is_async=True, instance_type="VirtualMachine", instance_param="id")
def expunge_vm(req, p):
    vms.expunge_vm(req.s, req.ctx, vms.get_vm(req.s, req.ctx, p.id))
    return Success()


@API.command("migrateVirtualMachine", "Attempts Migration of a VM to a different host or Root volume of the vm to a different storage pool", [
    P("virtualmachineid", UUID, "the ID of the virtual machine", required=True, entity="VirtualMachine"),
    P("hostid", UUID, "Destination Host ID to migrate VM to.", entity="Host"),
    P("storageid", UUID, "Destination storage pool ID to migrate the VM's volumes to (stopped VMs)", entity="StoragePool"),
    P("autoselect", BOOLEAN, "Automatically select a destination host which do not require storage migration"),
], view=VIRTUALMACHINE, is_async=True, instance_type="VirtualMachine", instance_param="virtualmachineid")
def migrate_vm(req, p):
    vm = vms.get_vm(req.s, req.ctx, p.virtualmachineid)
    return obj(req, VIRTUALMACHINE, vms.migrate(req.s, req.ctx, vm, hostid=p.hostid, storageid=p.storageid,
                                                progress=req.progress))


@API.command("migrateVirtualMachineWithVolume", "Attempts Migration of a VM with its volumes to a different host", [
    P("virtualmachineid", UUID, "the ID of the virtual machine", required=True, entity="VirtualMachine"),
    P("hostid", UUID, "Destination Host ID to migrate VM to.", entity="Host"),
    P("migrateto", "map", "Storage to pool mapping: migrateto[0].volume=<uuid>&migrateto[0].pool=<uuid>"),
    P("autoselect", BOOLEAN, "Automatically select a destination host for a running instance"),
], view=VIRTUALMACHINE, is_async=True, instance_type="VirtualMachine", instance_param="virtualmachineid")
def migrate_vm_with_volume(req, p):
    from volstack.errors import InvalidParameter
    mapping = {}
    for entry in (p.migrateto or {}).values():
        if not entry.get("volume") or not entry.get("pool"):
            raise InvalidParameter("Each migrateto entry needs volume and pool: migrateto[0].volume=…&migrateto[0].pool=…")
        mapping[entry["volume"]] = entry["pool"]
    vm = vms.get_vm(req.s, req.ctx, p.virtualmachineid)
    return obj(req, VIRTUALMACHINE, vms.migrate(req.s, req.ctx, vm, hostid=p.hostid, volume_map=mapping,
                                                progress=req.progress))


@API.command("listVirtualMachines", "List the virtual machines owned by the account.", [
    P("id", UUID, "the ID of the virtual machine", entity="VirtualMachine"),
    P("ids", LIST, "the IDs of the virtual machines, mutually exclusive with id", entity="VirtualMachine"),
    P("name", STRING, "name of the virtual machine (a substring match is not done)"),
    P("state", STRING, "state of the virtual machine. Possible values are: Running, Stopped, Present, Destroyed, Expunged. Present is used for the state equal not destroyed."),
    P("zoneid", UUID, "the availability zone ID", entity="Zone"),
    P("hostid", UUID, "the host ID", entity="Host", access=ROOT),
    P("storageid", UUID, "the storage ID where vm's volumes belong to", entity="StoragePool", access=ROOT),
    P("isoid", UUID, "list vms by iso", entity="Iso"),
    P("templateid", UUID, "list vms by template", entity="Template"),
    P("tags", MAP, "List resources by tags (key/value pairs): tags[0].key=k&tags[0].value=v; any pair matches"),
    *OWNER_LIST_PARAMS], view=VIRTUALMACHINE, is_list=True, access=USER)
def list_vms(req, p):
    keys = ("id", "ids", "name", "state", "zoneid", "hostid", "storageid", "isoid", "templateid", "tags")
    return lst(req, VIRTUALMACHINE, vms.list_vms(req.s, req.ctx, list_query(req, p), **{k: p.get(k) for k in keys}))


@API.command("attachIso", "Attaches an ISO to a virtual machine: a running guest gets it in its CD-ROM drive at "
             "once, a stopped one starts with it. A VM holds one ISO.", [
    P("id", UUID, "the ID of the ISO file", required=True, entity="Iso"),
    P("virtualmachineid", UUID, "the ID of the virtual machine", required=True, entity="VirtualMachine"),
    P("forced", BOOLEAN, "replace the ISO the VM already has (without it, attaching to a VM that has one is refused)"),
], view=VIRTUALMACHINE, is_async=True, access=USER, instance_type="VirtualMachine", instance_param="virtualmachineid")
def attach_iso(req, p):
    from volstack.services import isos, templates
    vm = vms.get_vm(req.s, req.ctx, p.virtualmachineid)
    iso = templates.get_template(req.s, req.ctx, p.id, is_iso=True)
    return obj(req, VIRTUALMACHINE, isos.attach(req.s, req.ctx, vm, iso, forced=bool(p.forced), progress=req.progress))


@API.command("detachIso", "Detaches any ISO file (if any) currently attached to a virtual machine.", [
    P("virtualmachineid", UUID, "The ID of the virtual machine", required=True, entity="VirtualMachine"),
    P("forced", BOOLEAN, "unused on KVM: the CD is always ejected at once, even if the guest locked the tray"),
], view=VIRTUALMACHINE, is_async=True, access=USER, instance_type="VirtualMachine", instance_param="virtualmachineid")
def detach_iso(req, p):
    from volstack.services import isos
    return obj(req, VIRTUALMACHINE, isos.detach(req.s, req.ctx, vms.get_vm(req.s, req.ctx, p.virtualmachineid)))


_CHANGE_PARAMS = [
    P("id", UUID, "The ID of the virtual machine", required=True, entity="VirtualMachine"),
    P("serviceofferingid", UUID, "the service offering ID to apply to the virtual machine", required=True,
      entity="ServiceOffering"),
    P("automigrate", BOOLEAN, "Flag for automatic migration of the root volume with new compute offering whenever "
      "migration is required to apply the offering"),
]


@API.command("changeServiceForVirtualMachine", "Changes the service offering for a virtual machine. The virtual machine "
             "must be in a Stopped state. The root volume follows the new offering's root disk size (never shrinks), "
             "storage tags and QoS.", _CHANGE_PARAMS, view=VIRTUALMACHINE, access=USER)
def change_service_for_vm(req, p):
    from volstack.services import vm_offerings
    vm = vms.get_vm(req.s, req.ctx, p.id)
    return obj(req, VIRTUALMACHINE, vm_offerings.change(req.s, req.ctx, vm, p.serviceofferingid,
                                                        automigrate=bool(p.automigrate)))


@API.command("scaleVirtualMachine", "Scales the virtual machine to a new service offering. A Running VM may change only "
             "the storage side (root disk size, tags, QoS applied online); CPU and memory need a Stopped VM.",
             _CHANGE_PARAMS, **VM_JOB)
def scale_vm(req, p):
    from volstack.services import vm_offerings
    vm = vms.get_vm(req.s, req.ctx, p.id)
    return obj(req, VIRTUALMACHINE, vm_offerings.change(req.s, req.ctx, vm, p.serviceofferingid, running_ok=True,
                                                        automigrate=bool(p.automigrate), progress=req.progress))


@API.command("findHostsForMigration", "Find hosts suitable for migrating a virtual machine.", [
    P("virtualmachineid", UUID, "find hosts to which this VM can be migrated and flag the hosts with enough CPU/RAM to "
      "host the VM", required=True, entity="VirtualMachine"),
], view=HOST, is_list=True)
def find_hosts_for_migration(req, p):
    from volstack.api.registry import Lst
    from volstack.api.views import Lookups
    from volstack.services import vm_migration
    rows = vm_migration.hosts_for_migration(req.s, vms.get_vm(req.s, req.ctx, p.virtualmachineid))
    rendered = Lookups(req.s).render_all(HOST, [host for host, _ in rows])
    items = [{**shown, "suitableformigration": problem is None,
              "requiresStorageMotion": False, **({"notsuitablereason": problem} if problem else {})}
             for shown, (_, problem) in zip(rendered, rows)]
    return page_of(req, p, "host", items)


@API.task("reconcileVirtualMachine", instance_type="VirtualMachine", on_interrupt="retry")
def reconcile_vm(req, p):
    """A difference between a host and the database (services/reconcile.py), settled on the VM's sync key."""
    from volstack.services import reconcile
    return {"virtualmachine": p["id"], "settled": reconcile.apply(req.s, req.ctx, p["host"], p["id"])}


def reconcile_submitter(jobs):
    """reconcile.reconcile_host's submit: one reconcileVirtualMachine task per VM (or unknown guest) and host."""
    from volstack.api.server import start_task
    from volstack.services.context import system_context

    def submit(s, name, host_uuid):
        return start_task(jobs, s, system_context(), "reconcileVirtualMachine", {"id": name, "host": host_uuid}, name)
    return submit
