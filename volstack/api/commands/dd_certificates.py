"""Direct-download certificates for HTTPS template sources (KVM)."""
from volstack.api.commands.common import page_of
from volstack.api.registry import API, BOOLEAN, STRING, UUID, Field as F, Lst, Obj, Param as P, View
from volstack.api.views import Lookups, _a, _ref
from volstack.db import models as m
from volstack.services import dd_certificates as certs, infra

CERTIFICATE = View("directdownloadcertificate", [
    F("id", "The direct download certificate id", _a("uuid")),
    F("alias", "The direct download certificate alias", _a("alias")),
    F("zoneid", "The zone id where the certificate is uploaded", _ref(m.Zone, "zone_id")),
    F("zonename", "The zone name where the certificate is uploaded", _ref(m.Zone, "zone_id", "name")),
    F("version", "The direct download certificate version", _a("version")),
    F("subject", "The direct download certificate subject", _a("subject")),
    F("validity", "The direct download certificate validity", _a("validity")),
    F("issuer", "The direct download certificate issuer", _a("issuer")),
    F("serialnum", "The direct download certificate serial num", _a("serial")),
    F("hypervisor", "The hypervisor of the hosts where the certificate is uploaded", _a("hypervisor")),
    F("hostsmap", "The hosts where the certificate is uploaded to", lambda r, lk: certs.host_map(lk.s, r) or None, "list"),
])
HOST_STATUS = View("hostsmap", [
    F("hostid", "the ID of the host", lambda r, lk: r[0].uuid),
    F("hostname", "the name of the host", lambda r, lk: r[0].name),
    F("status", "the status of the operation on the host", lambda r, lk: "SUCCESS" if r[1] else "FAILED"),
    F("details", "what the host answered", lambda r, lk: r[2]),
])


def _statuses(results) -> Lst:
    return Lst(HOST_STATUS.key, [HOST_STATUS.render(r, None) for r in results], len(results))


# CloudStack names the uploaded certificate's object after the command, unlike the list's
UPLOADED = View("uploadtemplatedirectdownloadcertificate", CERTIFICATE.fields)


@API.command("uploadTemplateDirectDownloadCertificate", "Upload a certificate for HTTPS direct template download on KVM hosts", [
    P("certificate", STRING, "SSL certificate (PEM; the base64 body alone is accepted)", required=True, length=65535),
    P("name", STRING, "Name for the uploaded certificate", required=True),
    P("hypervisor", STRING, "Hypervisor type", required=True),
    P("zoneid", UUID, "Zone to upload certificate", required=True, entity="Zone"),
    P("hostid", UUID, "(optional) the host ID to upload certificate", entity="Host"),
], view=UPLOADED, since="4.11.0")
def upload_certificate(req, p):
    cert, _ = certs.upload(req.s, req.ctx, name=p.name, certificate=p.certificate, hypervisor=p.hypervisor,
                           zoneid=p.zoneid, hostid=p.hostid)
    return Obj(UPLOADED.key, UPLOADED.render(cert, Lookups(req.s)))


@API.command("revokeTemplateDirectDownloadCertificate", "Revoke a direct download certificate from hosts in a zone", [
    P("zoneid", UUID, "zone to revoke certificate", required=True, entity="Zone"),
    P("id", UUID, "id of the certificate", entity="DirectDownloadCertificate"),
    P("name", STRING, "(optional) alias of the SSL certificate"),
    P("hypervisor", STRING, "(optional) hypervisor type"),
    P("hostid", UUID, "(optional) the host ID to revoke certificate", entity="Host"),
], view=HOST_STATUS, is_list=True, since="4.13.0")
def revoke_certificate(req, p):
    cert = certs.get(req.s, zoneid=p.zoneid, id=p.id, name=p.name)
    return _statuses(certs.revoke(req.s, req.ctx, cert, p.hostid))


@API.command("listTemplateDirectDownloadCertificates", "List the uploaded certificates for direct download templates", [
    P("id", UUID, "list direct download certificate by ID", entity="DirectDownloadCertificate"),
    P("zoneid", UUID, "the zone where certificates are uploaded", entity="Zone"),
    P("listhosts", BOOLEAN, "if set to true: include the hosts where the certificate is uploaded to"),
], view=CERTIFICATE, is_list=True, since="4.17.0")
def list_certificates(req, p):
    rows = certs.list_certs(req.s, req.ctx, id=p.id, zoneid=p.zoneid)
    items = Lookups(req.s).render_all(CERTIFICATE, rows)
    if not p.listhosts:
        for item in items:
            item.pop("hostsmap", None)
    return page_of(req, p, CERTIFICATE.key, items)


@API.command("provisionTemplateDirectDownloadCertificate", "Provisions a direct download certificate on a host", [
    P("id", UUID, "the id of the direct download certificate to provision", required=True,
      entity="DirectDownloadCertificate"),
    P("hostid", UUID, "the host to provision the certificate", required=True, entity="Host"),
], view=HOST_STATUS, since="4.17.0")
def provision_certificate(req, p):
    from sqlalchemy import select
    from volstack.db.image_models import DirectDownloadCertificate
    cert = req.s.scalar(select(DirectDownloadCertificate).where(DirectDownloadCertificate.uuid == p.id))
    return Obj(HOST_STATUS.key, HOST_STATUS.render(certs.provision(req.s, req.ctx, cert, infra.get_host(req.s, p.hostid)),
                                                   None))
