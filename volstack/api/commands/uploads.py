"""Volumes whose bytes come from elsewhere: uploadVolume (from a URL)."""
from volstack.api.commands.common import obj, own_account_only
from volstack.api.commands.volumes import VOLUME
from volstack.api.registry import API, STRING, USER, UUID, Param as P
from volstack.services import volume_upload, volumes


@API.command("uploadVolume", "Uploads a data disk.", [
    P("name", STRING, "the name of the volume", required=True),
    P("url", STRING, "the URL of where the volume is hosted. Possible URL include http:// and https://", required=True,
      length=2048),
    P("zoneid", UUID, "the ID of the zone the volume is to be hosted on", required=True, entity="Zone"),
    P("format", STRING, "the format for the volume. Possible values include QCOW2 and RAW (KVM).", required=True),
    P("checksum", STRING, "the checksum value of this volume: {SHA-256}hex, {MD5}hex … or a bare MD5"),
    P("diskofferingid", UUID, "the ID of the disk offering. This must be a custom sized offering since during "
      "uploadVolume volume size is unknown.", entity="DiskOffering"),
    P("imagestoreuuid", STRING, "Image store uuid"),
    P("account", STRING, "an optional accountName. Must be used with domainId."),
    P("domainid", UUID, "an optional domainId. If the account parameter is used, domainId must also be used.",
      entity="Domain"),
], view=VOLUME, is_async=True, access=USER, instance_type="Volume", instance_param="id",
   prepare=lambda req, p: _create(req, p).uuid)
def upload_volume(req, p):
    vol = volumes.get_volume(req.s, req.ctx, p.id)
    return obj(req, VOLUME, volume_upload.download(req.s, req.ctx, vol, req.progress))


def _create(req, p):
    own_account_only(req, p, "Uploading", "upload as that account")
    return volume_upload.create(req.s, req.ctx, name=p.name, url=p.url, zoneid=p.zoneid, format=p.format,
                                checksum=p.checksum, diskofferingid=p.diskofferingid, imagestoreuuid=p.imagestoreuuid)
