"""Volume commands."""
from volstack.api.commands.common import list_query, lst, obj, own_account_only, page_of, paged
from volstack.api.commands.pools import STORAGEPOOL
from volstack.api.registry import (API, BOOLEAN, LIST, LONG, MAP, OWNER_LIST_PARAMS, ROOT, STRING, USER, UUID, Field as F,
                                   Param as P, Success, View)
from volstack.api.views import _a, _date, _domain_path_of, _ref, tags_field
from volstack.db import models as m
from volstack.db import storage_models as sm
from volstack.services import vms, volume_migration, volumes


def _pool_attr(name):
    return lambda r, lk: lk.attr(sm.StoragePool, r.pool_id, name)


def _vm_attr(name):
    return lambda r, lk: lk.attr(sm.VirtualMachine, r.vm_id, name)


def _owner_fields():
    return [F("account", "the account associated with the object", _ref(m.Account, "account_id", "name")),
            F("domainid", "the ID of the domain associated with the object", _ref(m.Domain, "domain_id")),
            F("domain", "the domain associated with the object", _ref(m.Domain, "domain_id", "name")),
            F("domainpath", "path of the domain to which the object belongs", _domain_path_of("domain_id"))]


def _template_attr(attr):
    from volstack.db.image_models import Template
    return lambda r, lk: lk.attr(Template, r.template_id, attr)


VOLUME = View("volume", [
    F("id", "ID of the disk volume", _a("uuid")),
    F("name", "name of the disk volume", _a("name")),
    F("type", "type of the disk volume (ROOT or DATADISK)", _a("volume_type")),
    F("state", "the state of the disk volume", _a("state")),
    F("size", "size of the disk volume", _a("size"), "long"),
    F("virtualsize", "the bytes allocated", _a("size"), "long"),
    F("physicalsize", "the bytes actually consumed on disk", _a("physical_size"), "long"),
    F("path", "the path of the volume", _a("path"), access=ROOT),
    F("provisioningtype", "provisioning type used to create volumes.", _a("provisioning_type")),
    F("miniops", "min iops of the disk volume", _a("min_iops"), "long"),
    F("maxiops", "max iops of the disk volume", _a("max_iops"), "long"),
    F("hypervisor", "Hypervisor the volume belongs to", _a("hypervisor"), access=ROOT),
    F("zoneid", "ID of the availability zone", _ref(m.Zone, "zone_id")),
    F("zonename", "name of the availability zone", _ref(m.Zone, "zone_id", "name")),
    F("storageid", "id of the primary storage hosting the disk volume", _pool_attr("uuid"), access=ROOT),
    F("storage", "name of the primary storage hosting the disk volume", _pool_attr("name"), access=ROOT),
    F("storagetype", "shared or local storage", lambda r, lk: ("local" if lk.attr(sm.StoragePool, r.pool_id, "scope") == "HOST" else "shared") if r.pool_id else lk.attr(sm.DiskOffering, r.disk_offering_id, "storage_type"), access=ROOT),
    F("templateid", "id of the template the ROOT volume was created from", _template_attr("uuid")),
    F("templatename", "name of the template the ROOT volume was created from", _template_attr("name")),
    F("templatedisplaytext", "an alternate display text of the template for the virtual machine",
      _template_attr("display_text")),
    F("snapshotid", "ID of the snapshot from which this volume was created", lambda r, lk: (r.details or {}).get("snapshot")),
    F("diskofferingid", "ID of the disk offering", _ref(sm.DiskOffering, "disk_offering_id")),
    F("diskofferingname", "name of the disk offering", _ref(sm.DiskOffering, "disk_offering_id", "name")),
    F("diskofferingdisplaytext", "the display text of the disk offering", _ref(sm.DiskOffering, "disk_offering_id", "display_text")),
    F("virtualmachineid", "id of the virtual machine", _vm_attr("uuid")),
    F("vmname", "name of the virtual machine", _vm_attr("name")),
    F("vmdisplayname", "display name of the virtual machine", _vm_attr("display_name")),
    F("vmstate", "state of the virtual machine", _vm_attr("state")),
    F("vmtype", "type of the virtual machine", lambda r, lk: "User" if r.vm_id else None),
    F("deviceid", "the ID of the device on user vm the volume is attahed to.", _a("device_id"), "long"),
    F("attached", "the date the volume was attached to a VM instance", _date("attached"), "date"),
    F("destroyed", "the boolean state of whether the volume is destroyed or not", lambda r, lk: r.state == "Destroy", "boolean"),
    F("status", "the status of the volume: the reason its last operation failed", _a("error")),
    F("created", "the date the disk volume was created", _date("created"), "date"),
    F("isextractable", "true if the volume is extractable, false otherwise", lambda r, lk: True, "boolean"),
    F("displayvolume", "an optional field whether to the display the volume to the end user or not.", lambda r, lk: True, "boolean"),
    F("encryptformat", "the format of the disk encryption if applicable", _a("encrypt_format")),
    *_owner_fields(),
    tags_field("Volume"),
])

VOL_FILTERS = [
    P("id", UUID, "the ID of the disk volume", entity="Volume"),
    P("ids", LIST, "the IDs of the volumes, mutually exclusive with id", entity="Volume"),
    P("name", STRING, "the name of the disk volume"),
    P("type", STRING, "the type of disk volume"),
    P("state", STRING, "state of the volume. Possible values are: Ready, Allocated, Destroy, Expunging, Expunged."),
    P("zoneid", UUID, "the ID of the availability zone", entity="Zone"),
    P("podid", UUID, "the pod id the disk volume belongs to", entity="Pod", access=ROOT),
    P("clusterid", UUID, "the cluster id the disk volume belongs to", entity="Cluster", access=ROOT),
    P("hostid", UUID, "list volumes on specified host", entity="Host", access=ROOT),
    P("storageid", UUID, "the ID of the storage pool, available to ROOT admin only", entity="StoragePool", access=ROOT),
    P("virtualmachineid", UUID, "the ID of the virtual machine", entity="VirtualMachine"),
    P("diskofferingid", UUID, "list volumes by disk offering", entity="DiskOffering"),
    P("serviceofferingid", UUID, "list volumes by disk offering of a service offering (diskofferingid wins when both "
      "are passed)", entity="ServiceOffering"),
    P("isencrypted", BOOLEAN, "list only volumes that are encrypted", access=ROOT),
    P("listsystemvms", BOOLEAN, "list system VMs; only ROOT admin is eligible to pass this parameter (volstack runs "
      "no system VMs, so there are none to add)", access=ROOT),
    P("tags", MAP, "List resources by tags (key/value pairs): tags[0].key=k&tags[0].value=v; any pair matches"),
    *OWNER_LIST_PARAMS,
]
_FILTER_NAMES = ("id", "ids", "name", "type", "state", "zoneid", "podid", "clusterid", "hostid", "storageid",
                 "virtualmachineid", "diskofferingid", "serviceofferingid", "tags", "isencrypted")


def _stat(field):
    def get(r, lk):
        row = lk.get(sm.VolumeStats, r.id)
        return getattr(row, field) if row is not None else 0
    return get


VOLUME_METRICS = View("volume", VOLUME.fields + [
    F("sizegb", "disk size in GiB", lambda r, lk: f"{r.size / GIB:.2f} GB"),
    F("utilization", "the disk utilization: the bytes the image takes of its virtual size",
      lambda r, lk: f"{100.0 * r.physical_size / r.size:.2f}%" if r.size and r.physical_size is not None else None),
    F("diskiopstotal", "the total disk iops", lambda r, lk: int(_stat("iops_total")(r, lk)), "long"),
    F("diskioread", "the read (IO) of disk on the vm", _stat("read_ops"), "long"),
    F("diskiowrite", "the write (IO) of disk on the vm", _stat("write_ops"), "long"),
    F("diskkbsread", "the VM's disk read in KiB", lambda r, lk: _stat("read_bytes")(r, lk) // 1024, "long"),
    F("diskkbswrite", "the VM's disk write in KiB", lambda r, lk: _stat("write_bytes")(r, lk) // 1024, "long"),
])
GIB = 1024 ** 3


@API.command("createVolume", "Creates a disk volume from a disk offering. This disk volume must still be attached to a virtual machine to make use of it.", [
    P("name", STRING, "the name of the disk volume"),
    P("zoneid", UUID, "the ID of the availability zone", entity="Zone"),
    P("diskofferingid", UUID, "the ID of the disk offering. Either diskOfferingId or snapshotId must be passed in.", entity="DiskOffering"),
    P("size", LONG, "Arbitrary volume size (GB), for a customized disk offering"),
    P("miniops", LONG, "min iops"),
    P("maxiops", LONG, "max iops"),
    P("snapshotid", UUID, "the snapshot ID for the disk volume. Either diskOfferingId or snapshotId must be passed in.", entity="Snapshot"),
    P("virtualmachineid", UUID, "the ID of the virtual machine; to be used with snapshot Id, VM to which the volume gets attached after creation", entity="VirtualMachine"),
    P("customid", STRING, "an optional field, in case you want to set a custom id to the resource. Allowed to Root Admins only"),
    P("account", STRING, "the account associated with the disk volume. Must be used with the domainId parameter."),
    P("domainid", UUID, "the domain ID associated with the disk offering.", entity="Domain"),
], view=VOLUME, is_async=True, access=USER, instance_type="Volume", instance_param="id",
   prepare=lambda req, p: _create_volume_row(req, p).uuid)
def create_volume(req, p):
    vol = volumes.get_volume(req.s, req.ctx, p.id)
    if p.virtualmachineid:
        volumes.attach(req.s, req.ctx, vol, vms.get_vm(req.s, req.ctx, p.virtualmachineid))
    return obj(req, VOLUME, vol)


def _create_volume_row(req, p):
    own_account_only(req, p, "Creating a volume", "create it as that account")
    if p.snapshotid:
        from volstack.services import snapshots
        return snapshots.new_volume(req.s, req.ctx, snapshotid=p.snapshotid, name=p.name, zoneid=p.zoneid,
                                    diskofferingid=p.diskofferingid, size=p.size)
    return volumes.create_volume(req.s, req.ctx, name=p.name, zoneid=p.zoneid, diskofferingid=p.diskofferingid,
                                 size=p.size, miniops=p.miniops, maxiops=p.maxiops)


@API.command("listVolumes", "Lists all volumes.", VOL_FILTERS, view=VOLUME, is_list=True, access=USER)
def list_volumes(req, p):
    return lst(req, VOLUME, volumes.list_volumes(req.s, req.ctx, list_query(req, p), **{k: p.get(k) for k in _FILTER_NAMES}))


@API.command("listVolumesMetrics", "Lists volume metrics: the volumes with their block statistics, collected every volume.stats.interval",
             VOL_FILTERS, view=VOLUME_METRICS, is_list=True, access=USER, since="4.9.3")
def list_volumes_metrics(req, p):
    return lst(req, VOLUME_METRICS, volumes.list_volumes(req.s, req.ctx, list_query(req, p),
                                                         **{k: p.get(k) for k in _FILTER_NAMES}))


VOL_JOB = dict(is_async=True, access=USER, instance_type="Volume", instance_param="id")


@API.command("attachVolume", "Attaches a disk volume to a virtual machine.", [
    P("id", UUID, "the ID of the disk volume", required=True, entity="Volume"),
    P("virtualmachineid", UUID, "the ID of the virtual machine", required=True, entity="VirtualMachine"),
    P("deviceid", LONG, "The ID of the device to map the volume to the guest OS. If no deviceID is informed, the next available deviceID will be chosen. Use 0 for the root disk, 3 is the CD-ROM"),
], view=VOLUME, **VOL_JOB)
def attach_volume(req, p):
    vol = volumes.get_volume(req.s, req.ctx, p.id)
    return obj(req, VOLUME, volumes.attach(req.s, req.ctx, vol, vms.get_vm(req.s, req.ctx, p.virtualmachineid), p.deviceid))


@API.command("detachVolume", "Detaches a disk volume from a virtual machine.", [
    P("id", UUID, "the ID of the disk volume", entity="Volume"),
    P("virtualmachineid", UUID, "the ID of the virtual machine where the volume is detached from", entity="VirtualMachine"),
    P("deviceid", LONG, "the device ID on the virtual machine where volume is detached from"),
], view=VOLUME, **VOL_JOB)
def detach_volume(req, p):
    if p.id:
        vol = volumes.get_volume(req.s, req.ctx, p.id)
    elif p.virtualmachineid and p.deviceid is not None:
        vm = vms.get_vm(req.s, req.ctx, p.virtualmachineid)
        vol = next((v for v in volumes.list_volumes(req.s, req.ctx, list_query(req, p), virtualmachineid=vm.uuid)[0]
                    if v.device_id == p.deviceid), None)
        if vol is None:
            from volstack.errors import InvalidParameter
            raise InvalidParameter(f"VM {vm.name} has no volume at device {p.deviceid}")
    else:
        from volstack.errors import InvalidParameter
        raise InvalidParameter("Pass id, or virtualmachineid with deviceid")
    return obj(req, VOLUME, volumes.detach(req.s, req.ctx, vol))


@API.command("resizeVolume", "Resizes a volume", [
    P("id", UUID, "the ID of the disk volume", required=True, entity="Volume"),
    P("size", LONG, "New volume size in GB"),
    P("diskofferingid", UUID, "new disk offering id", entity="DiskOffering"),
    P("shrinkok", BOOLEAN, "Verify OK to Shrink"),
    P("miniops", LONG, "New minimum number of IOPS"),
    P("maxiops", LONG, "New maximum number of IOPS"),
    P("automigrate", BOOLEAN, "Flag to allow automatic migration of the volume to another suitable storage pool that accommodates the new size"),
], view=VOLUME, **VOL_JOB)
def resize_volume(req, p):
    vol = volumes.get_volume(req.s, req.ctx, p.id)
    return obj(req, VOLUME, volumes.resize(req.s, req.ctx, vol, size_gb=p.size, diskofferingid=p.diskofferingid,
                                           shrinkok=bool(p.shrinkok), miniops=p.miniops, maxiops=p.maxiops))


@API.command("deleteVolume", "Deletes a detached disk volume.", [P("id", UUID, "The ID of the disk volume", required=True, entity="Volume")],
             response_key="success", access=USER)
def delete_volume(req, p):
    volumes.delete(req.s, req.ctx, volumes.get_volume(req.s, req.ctx, p.id))
    return Success()


@API.command("destroyVolume", "Destroys a Volume.", [
    P("id", UUID, "The ID of the volume", required=True, entity="Volume"),
    P("expunge", BOOLEAN, "If true is passed, the volume is expunged immediately. False by default."),
], view=VOLUME, **VOL_JOB)
def destroy_volume(req, p):
    return obj(req, VOLUME, volumes.destroy(req.s, req.ctx, volumes.get_volume(req.s, req.ctx, p.id), bool(p.expunge)))


@API.command("recoverVolume", "Recovers a Destroy volume.", [P("id", UUID, "The ID of the volume", required=True, entity="Volume")],
             view=VOLUME, access=USER)
def recover_volume(req, p):
    return obj(req, VOLUME, volumes.recover(req.s, req.ctx, volumes.get_volume(req.s, req.ctx, p.id)))


@API.command("migrateVolume", "Migrate volume", [
    P("volumeid", UUID, "the ID of the volume", required=True, entity="Volume"),
    P("storageid", UUID, "destination storage pool ID to migrate the volume to", required=True, entity="StoragePool"),
    P("livemigrate", BOOLEAN, "if the volume should be live migrated when it is attached to a running vm"),
    P("newdiskofferingid", UUID, "The new disk offering ID that replaces the current one used by the volume.", entity="DiskOffering"),
], view=VOLUME, is_async=True, access=USER, instance_type="Volume", instance_param="volumeid")
def migrate_volume(req, p):
    from volstack.services import pools
    vol = volumes.get_volume(req.s, req.ctx, p.volumeid)
    pool = pools.get_pool(req.s, p.storageid)
    vol = volume_migration.migrate(req.s, req.ctx, vol, pool, bool(p.livemigrate), req.progress)
    if p.newdiskofferingid:
        from volstack.services import offerings
        vol.disk_offering_id = offerings.get_disk_offering(req.s, req.ctx, p.newdiskofferingid).id
    return obj(req, VOLUME, vol)


@API.command("findStoragePoolsForMigration", "Lists storage pools available for migration of a volume.", [
    P("id", UUID, "the ID of the volume", required=True, entity="Volume")], view=STORAGEPOOL, is_list=True)
def find_pools_for_migration(req, p):
    from volstack.api.registry import Lst
    from volstack.api.views import Lookups
    rows = volume_migration.pools_for_migration(req.s, req.ctx, volumes.get_volume(req.s, req.ctx, p.id))
    rendered = Lookups(req.s).render_all(STORAGEPOOL, [pool for pool, _ in rows])
    items = [{**shown, "suitableformigration": ok} for shown, (_, ok) in zip(rendered, rows)]
    return page_of(req, p, "storagepool", items)


@API.command("changeOfferingForVolume", "Change disk offering of the volume and also an option to auto migrate if required to apply the new disk offering", [
    P("id", UUID, "the ID of the volume", required=True, entity="Volume"),
    P("diskofferingid", UUID, "new disk offering id", required=True, entity="DiskOffering"),
    P("size", LONG, "New volume size in GB for the custom disk offering"),
    P("miniops", LONG, "New minimum number of IOPS for the custom disk offering"),
    P("maxiops", LONG, "New maximum number of IOPS for the custom disk offering"),
    P("automigrate", BOOLEAN, "Flag for automatic migration of the volume with new disk offering whenever migration is required to apply the offering"),
    P("shrinkok", BOOLEAN, "Verify OK to Shrink"),
], view=VOLUME, since="4.17", **VOL_JOB)
def change_offering_for_volume(req, p):
    vol = volumes.get_volume(req.s, req.ctx, p.id)
    return obj(req, VOLUME, volumes.change_offering(req.s, req.ctx, vol, diskofferingid=p.diskofferingid, size_gb=p.size,
                                                    shrinkok=bool(p.shrinkok), miniops=p.miniops, maxiops=p.maxiops,
                                                    automigrate=bool(p.automigrate), progress=req.progress))


IMPORTABLE = View("volumeforimport", [
    F("name", "the name of the image file", lambda r, lk: r["name"]),
    F("path", "the path of the image on the storage pool", lambda r, lk: r["name"], access=ROOT),
    F("format", "the image format", lambda r, lk: r.get("format")),
    F("virtualsize", "the size of the file in bytes", lambda r, lk: r.get("size"), "long"),
])


@API.command("listVolumesForImport", "Lists image files on a storage pool that volstack does not manage yet", [
    P("storageid", UUID, "the ID of the storage pool", required=True, entity="StoragePool"),
    P("path", STRING, "the path of a directory on the pool to list"),
], view=IMPORTABLE, is_list=True, since="4.19.1")
def list_volumes_for_import(req, p):
    from volstack.services import pools
    return paged(req, p, IMPORTABLE, volumes.unmanaged_images(req.s, req.ctx, pools.get_pool(req.s, p.storageid), p.path))


@API.command("importVolume", "Import an image file on a storage pool as a volume", [
    P("path", STRING, "the file name of the image on the storage pool", required=True, length=1024),
    P("storageid", UUID, "the ID of the storage pool", required=True, entity="StoragePool"),
    P("name", STRING, "the name of the volume"),
    P("diskofferingid", UUID, "the disk offering of the volume", entity="DiskOffering"),
], view=VOLUME, is_async=True, since="4.19.1", instance_type="StoragePool", instance_param="storageid")
def import_volume(req, p):
    from volstack.services import pools
    return obj(req, VOLUME, volumes.import_volume(req.s, req.ctx, pools.get_pool(req.s, p.storageid), p.path,
                                                  name=p.name, diskofferingid=p.diskofferingid))


@API.command("unmanageVolume", "Stops managing a volume; its image stays on the storage pool",
             [P("id", UUID, "the ID of the volume", required=True, entity="Volume")], response_key="success",
             is_async=True, since="4.19.1", instance_type="Volume", instance_param="id")
def unmanage_volume(req, p):
    volumes.unmanage(req.s, req.ctx, volumes.get_volume(req.s, req.ctx, p.id))
    return Success()
