"""Direct-download certificates: CA certificates the KVM hosts of a zone trust for HTTPS template sources
(uploadTemplateDirectDownloadCertificate and friends). The PEM is kept in the database and installed on
each host through its agent; a host that joins later gets it with provisionTemplateDirectDownloadCertificate."""
import os
import ssl
import tempfile
import textwrap
from datetime import datetime

from sqlalchemy import select

from volstack.db.image_models import DirectDownloadCertificate as Cert, DirectDownloadCertificateHost as CertHost
from volstack.db.models import Host, Zone
from volstack.drivers.hosts import channel
from volstack.errors import CloudError, InvalidParameter
from volstack.services import events, infra, lookup
from volstack.services.context import require_root_admin

lookup.register_entity("DirectDownloadCertificate", Cert)
BEGIN, END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"


def normalize(pem: str) -> str:
    """CloudStack accepts the base64 body alone: add the header and footer, wrap at 64 characters."""
    body = "".join(pem.replace(BEGIN, "").replace(END, "").split())
    return f"{BEGIN}\n" + "\n".join(textwrap.wrap(body, 64)) + f"\n{END}\n"


def describe(pem: str) -> dict:
    """Issuer, subject, serial and validity, read by the ssl module (no extra dependency)."""
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
        f.write(pem)
    try:
        info = ssl._ssl._test_decode_cert(f.name)
    except (ssl.SSLError, ValueError) as e:
        raise InvalidParameter(f"The certificate is not a valid X.509 PEM certificate: {e}") from None
    finally:
        os.unlink(f.name)

    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
             "stateOrProvinceName": "ST", "localityName": "L", "emailAddress": "EMAILADDRESS"}

    def name(parts):          # as Java's X500Principal prints it, which CloudStack shows
        return ", ".join(f"{short.get(k, k)}={v}" for rdn in parts for k, v in rdn)
    return {"issuer": name(info.get("issuer", ())), "subject": name(info.get("subject", ())),
            "serial": info.get("serialNumber"), "version": str(info.get("version", "")),
            "validity": f"{info.get('notBefore')} - {info.get('notAfter')}", "not_after": info.get("notAfter")}


def _hosts(s, zone, hostid=None) -> list[Host]:
    stmt = select(Host).where(Host.zone_id == zone.id, Host.hypervisor == "KVM", Host.state == "Up")
    if hostid:
        stmt = stmt.where(Host.uuid == hostid)
    return list(s.scalars(stmt.order_by(Host.id)))


def _install(s, cert: Cert, host: Host) -> tuple[bool, str]:
    row = s.scalar(select(CertHost).where(CertHost.certificate_id == cert.id, CertHost.host_id == host.id))
    try:
        channel(host).call("certificate_install", alias=cert.alias, certificate=cert.certificate)
    except CloudError as exc:
        return False, exc.text
    if row is None:
        s.add(CertHost(certificate_id=cert.id, host_id=host.id))
    else:
        row.revoked = False
    return True, "Certificate installed"


def upload(s, ctx, *, name, certificate, hypervisor, zoneid, hostid=None) -> tuple[Cert, list]:
    require_root_admin(ctx)
    if (hypervisor or "").upper() != "KVM":
        raise InvalidParameter("Direct download certificates are for KVM hosts: pass hypervisor=KVM")
    zone = infra.get_zone(s, zoneid)
    pem = normalize(certificate)
    info = describe(pem)
    expires = datetime.strptime(info["not_after"], "%b %d %H:%M:%S %Y %Z") if info["not_after"] else None
    if expires and expires < datetime.utcnow():
        raise InvalidParameter(f"The certificate expired on {info['not_after']}")
    cert = s.scalar(select(Cert).where(Cert.zone_id == zone.id, Cert.alias == name))
    if cert is not None and cert.certificate != pem:
        raise InvalidParameter(f"A different certificate with alias {name} exists in zone {zone.name}; revoke it first")
    if cert is None:
        cert = Cert(alias=name, certificate=pem, zone_id=zone.id, hypervisor="KVM",
                    **{k: info[k] for k in ("issuer", "subject", "serial", "validity", "version")})
        s.add(cert)
        s.flush()
    results = [(h, *_install(s, cert, h)) for h in _hosts(s, zone, hostid)]
    events.record(s, ctx, "CERTIFICATE.UPLOAD", f"Direct download certificate {name} uploaded to zone {zone.name}: "
                  f"{sum(ok for _, ok, _ in results)} of {len(results)} hosts", resource_type="Zone", resource_uuid=zone.uuid)
    return cert, results


def get(s, *, zoneid, id=None, name=None) -> Cert:
    zone = infra.get_zone(s, zoneid)
    stmt = select(Cert).where(Cert.zone_id == zone.id)
    stmt = stmt.where(Cert.uuid == id) if id else stmt.where(Cert.alias == name)
    cert = s.scalar(stmt) if (id or name) else None
    if cert is None:
        raise InvalidParameter("Unable to find the direct download certificate: pass its id or name and its zone")
    return cert


def revoke(s, ctx, cert: Cert, hostid=None) -> list:
    require_root_admin(ctx)
    zone = s.get(Zone, cert.zone_id)
    results = []
    for row in s.scalars(select(CertHost).where(CertHost.certificate_id == cert.id, CertHost.revoked.is_(False))):
        host = s.get(Host, row.host_id)
        if hostid and host.uuid != hostid:
            continue
        try:
            channel(host).call("certificate_remove", alias=cert.alias)
            row.revoked = True
            results.append((host, True, "Certificate revoked"))
        except CloudError as exc:
            results.append((host, False, exc.text))
    events.record(s, ctx, "CERTIFICATE.REVOKE", f"Direct download certificate {cert.alias} revoked on "
                  f"{sum(ok for _, ok, _ in results)} hosts", resource_type="Zone",
                  resource_uuid=zone.uuid)
    return results


def provision(s, ctx, cert: Cert, host: Host) -> tuple:
    require_root_admin(ctx)
    if host.zone_id != cert.zone_id:
        raise InvalidParameter(f"Host {host.name} is not in the certificate's zone")
    return (host, *_install(s, cert, host))


def host_map(s, cert: Cert) -> list[dict]:
    rows = s.execute(select(CertHost, Host).join(Host, Host.id == CertHost.host_id)
                     .where(CertHost.certificate_id == cert.id).order_by(Host.id))
    return [{"hostid": h.uuid, "hostname": h.name, "status": "revoked" if r.revoked else "installed"} for r, h in rows]


def list_certs(s, ctx, *, id=None, zoneid=None) -> list[Cert]:
    require_root_admin(ctx)
    stmt = select(Cert).order_by(Cert.id)
    if id:
        stmt = stmt.where(Cert.uuid == id)
    if zoneid:
        stmt = stmt.where(Cert.zone_id == infra.get_zone(s, zoneid).id)
    return list(s.scalars(stmt))
