"""Image transfers over HTTP: extract URLs (extractTemplate, extractIso, extractVolume) and browser uploads
(getUploadParamsForVolume, getUploadParamsForTemplate, getUploadParamsForIso)."""
from volstack.api.commands.common import obj, own_account_only
from volstack.api.commands.templates import REGISTER_COMMON
from volstack.api.registry import (API, BOOLEAN, MAP, STRING, USER, UUID, Field as F, Obj, Param as P, View)
from volstack.api.views import _a, _date, _ref
from volstack.db import models as m
from volstack.db.image_models import Template
from volstack.db.storage_models import Volume
from volstack.errors import InvalidParameter
from volstack.services import extracts, post_uploads, templates, volumes


def _object(field):
    def get(r, lk):
        row = lk.get(Volume if r.object_type == "Volume" else Template, r.object_id)
        return getattr(row, field, None) if row is not None else None
    return get


def _extract_view(key):
    return View(key, [
        F("id", "the id of extracted object", _a("object_uuid")),
        F("name", "the name of the extracted object", _object("name")),
        F("extractId", "the upload id of extracted object", _a("uuid")),
        F("extractMode", "the mode of extraction - upload or download", _a("mode")),
        F("state", "the state of the extracted object", lambda r, lk: "DOWNLOAD_URL_CREATED"),
        F("status", "the status of the extraction", lambda r, lk: "DOWNLOAD_URL_CREATED"),
        F("uploadpercentage", "the percentage of the entity uploaded to the specified location",
          lambda r, lk: 100, "integer"),
        F("url", "if mode = upload then url of the uploaded entity. if mode = download the url from which the entity "
          "can be downloaded", _a("url")),
        F("storagetype", "type of the storage", lambda r, lk: "Image"),
        F("zoneid", "zone ID the object was extracted from", _ref(m.Zone, "zone_id")),
        F("zonename", "zone name the object was extracted from", _ref(m.Zone, "zone_id", "name")),
        F("accountid", "the account id to which the extracted object belongs", _ref(m.Account, "account_id")),
        F("created", "the time and date the object was created", _date("created"), "date"),
    ])


EXTRACT_TEMPLATE, EXTRACT_ISO, EXTRACT_VOLUME = _extract_view("template"), _extract_view("iso"), _extract_view("volume")

EXTRACT_PARAMS = [
    P("mode", STRING, "the mode of extraction: HTTP_DOWNLOAD (FTP_UPLOAD is not supported)", required=True),
    P("url", STRING, "the url to which the object would be extracted (FTP_UPLOAD only, not supported: refused)",
      length=2048),
]


def _refuse_upload_url(p):
    """url is FTP_UPLOAD's destination; HTTP_DOWNLOAD makes its own URL, so a url passed would go nowhere.
    (With mode=FTP_UPLOAD the mode itself is refused, which says more.)"""
    if p.url and (p.mode or "").upper() != "FTP_UPLOAD":
        raise InvalidParameter("url is the destination of FTP_UPLOAD, which volstack does not support; omit url: "
                               "mode=HTTP_DOWNLOAD answers with the URL to download the object from")


def _extract_template(req, p, is_iso):
    _refuse_upload_url(p)
    t = templates.get_template(req.s, req.ctx, p.id, is_iso)
    return obj(req, EXTRACT_ISO if is_iso else EXTRACT_TEMPLATE,
               extracts.extract_template(req.s, req.ctx, t, mode=p.mode, zoneid=p.zoneid))


@API.command("extractTemplate", "Extracts a template", [
    P("id", UUID, "the ID of the template", required=True, entity="Template"), *EXTRACT_PARAMS,
    P("zoneid", UUID, "the ID of the zone where the template is hosted", entity="Zone"),
], view=EXTRACT_TEMPLATE, is_async=True, access=USER, instance_type="Template", instance_param="id")
def extract_template(req, p):
    return _extract_template(req, p, False)


@API.command("extractIso", "Extracts an ISO", [
    P("id", UUID, "the ID of the ISO file", required=True, entity="Template"), *EXTRACT_PARAMS,
    P("zoneid", UUID, "the ID of the zone where the ISO is originally located", entity="Zone"),
], view=EXTRACT_ISO, is_async=True, access=USER, instance_type="Template", instance_param="id")
def extract_iso(req, p):
    return _extract_template(req, p, True)


@API.command("extractVolume", "Extracts volume (an encrypted volume's download is its encrypted image: a qcow2 with "
             "LUKS encryption, unreadable without the passphrase, which volstack never hands out)", [
    P("id", UUID, "the ID of the volume", required=True, entity="Volume"), *EXTRACT_PARAMS,
    P("zoneid", UUID, "the ID of the zone where the volume is located", required=True, entity="Zone"),
], view=EXTRACT_VOLUME, is_async=True, access=USER, instance_type="Volume", instance_param="id")
def extract_volume(req, p):
    _refuse_upload_url(p)
    vol = volumes.get_volume(req.s, req.ctx, p.id)
    return obj(req, EXTRACT_VOLUME, extracts.extract_volume(req.s, req.ctx, vol, mode=p.mode, zoneid=p.zoneid,
                                                             progress=req.progress))


UPLOAD_PARAMS = View("getuploadparams", [
    F("id", "the template/volume ID", lambda r, lk: r["id"]),
    F("postURL", "POST url to upload the file to", lambda r, lk: r["postURL"]),
    F("metadata", "encrypted data to be sent in the POST request.", lambda r, lk: r["metadata"]),
    F("expires", "the timestamp after which the signature expires", lambda r, lk: r["expires"]),
    F("signature", "signature to be sent in the POST request.", lambda r, lk: r["signature"]),
])
OWNER = [
    P("account", STRING, "an optional accountName. Must be used with domainId."),
    P("domainid", UUID, "an optional domainId. If the account parameter is used, domainId must also be used.",
      entity="Domain"),
]


def _params(result) -> Obj:
    return Obj(UPLOAD_PARAMS.key, UPLOAD_PARAMS.render(result, None))


@API.command("getUploadParamsForVolume", "Upload a data disk to the cloudstack cloud.", [
    P("name", STRING, "the name of the volume/template/iso", required=True),
    P("zoneid", UUID, "the ID of the zone the volume/template/iso is to be hosted on", required=True, entity="Zone"),
    P("format", STRING, "the format for the volume/template/iso: QCOW2 or RAW (KVM)", required=True),
    P("checksum", STRING, "the checksum value of this volume: {SHA-256}hex, {MD5}hex … or a bare MD5"),
    P("diskofferingid", UUID, "the ID of the disk offering. This must be a custom sized offering since during "
      "upload of volume/template size is unknown.", entity="DiskOffering"),
    P("imagestoreuuid", STRING, "Image store uuid"),
    *OWNER,
], view=UPLOAD_PARAMS, access=USER, writes=True)
def get_upload_params_for_volume(req, p):
    own_account_only(req, p, "Uploading", "upload as that account")
    return _params(post_uploads.volume_params(req.s, req.ctx, name=p.name, zoneid=p.zoneid, format=p.format,
                                              checksum=p.checksum, diskofferingid=p.diskofferingid,
                                              imagestoreuuid=p.imagestoreuuid))


_SHARED = {"name", "displaytext", "checksum", "ostypeid", "ispublic", "isfeatured", "isextractable",
           "passwordenabled"}
TEMPLATE_COMMON = [p for p in REGISTER_COMMON if p.name in _SHARED] + [
    P("zoneid", UUID, "the ID of the zone the template/iso is to be hosted on", required=True, entity="Zone")]


def _template_params(req, p, is_iso):
    own_account_only(req, p, "Uploading", "upload as that account")
    return _params(post_uploads.template_params(
        req.s, req.ctx, is_iso=is_iso, zoneid=p.zoneid, name=p.name, format=p.get("format") or "ISO",
        displaytext=p.displaytext, hypervisor=p.get("hypervisor") or "KVM", ostypeid=p.ostypeid, checksum=p.checksum,
        ispublic=p.ispublic, isfeatured=p.isfeatured, isextractable=p.isextractable,
        passwordenabled=p.passwordenabled, requireshvm=p.get("requireshvm") if p.get("requireshvm") is not None else True,
        bootable=p.bootable if p.bootable is not None else True, templatetype=p.get("templatetype"),
        details=(p.get("details") or {}).get("0")))


@API.command("getUploadParamsForTemplate", "upload an existing template into the CloudStack cloud.", [
    *TEMPLATE_COMMON,
    P("format", STRING, "the format for the template: QCOW2 or RAW (KVM)", required=True),
    P("hypervisor", STRING, "the target hypervisor for the template", required=True),
    P("requireshvm", BOOLEAN, "true if this template requires HVM"),
    P("templatetype", STRING, "the type of the template: USER (default); BUILTIN or SYSTEM for the root admin"),
    P("details", MAP, "Template details in key/value pairs."),
    P("bootable", BOOLEAN, "true if this template is bootable"),
    *OWNER,
], view=UPLOAD_PARAMS, access=USER, writes=True)
def get_upload_params_for_template(req, p):
    return _template_params(req, p, False)


@API.command("getUploadParamsForIso", "upload an existing ISO into the CloudStack cloud.", [
    *TEMPLATE_COMMON,
    P("bootable", BOOLEAN, "true if this ISO is bootable. If not passed explicitly its assumed to be true"),
    *OWNER,
], view=UPLOAD_PARAMS, access=USER, writes=True)
def get_upload_params_for_iso(req, p):
    return _template_params(req, p, True)
