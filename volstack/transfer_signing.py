"""Signed transfer URLs: extract downloads and browser uploads served by a host agent.

The management server signs, the agent checks; nothing else is shared and the agent keeps no state
about a URL. Both sides derive two keys, one for the HMAC and one for Fernet, from the agent's bearer
token (the management server keeps it encrypted in host.credential): a URL made for one agent is
worthless on another, and the token itself never signs anything a user sees.

- metadata: the claims (what to serve or where to write, the expiry) as a Fernet token under the sealing key,
  so users cannot read or change store locations;
- signature: hex HMAC-SHA256 over metadata + path + expires, as CloudStack signs its post-upload
  parameters (metadata + url + expires). The path is signed rather than the whole URL so the agent
  need not know the name the client used to reach it;
- expires: ISO 8601 UTC (`2026-11-21T14:00:00Z`); the agent refuses the URL after it.

Imported by both volstack.services and volstack.agent, so it imports nothing from either.
"""
import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from cryptography.fernet import Fernet, InvalidToken

PREFIX = "/transfer/"
DOWNLOAD = PREFIX + "download/"
UPLOAD = PREFIX + "upload/"


class Refused(Exception):
    """The request does not carry a valid, unexpired signature (the agent answers 403)."""


def _key(token: str, label: bytes) -> bytes:
    return hmac.new(token.encode(), label, hashlib.sha256).digest()


# One key per use (signing, sealing), each derived under its own label: a key never serves two algorithms.
# v1 derived a single key for both; links signed by v1 stop working after an upgrade, which is harmless
# as links live minutes to hours and a user asks for a new one.
SIGN_LABEL, SEAL_LABEL = b"volstack-transfer-v2-sign", b"volstack-transfer-v2-seal"


def _fernet(token: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_key(token, SEAL_LABEL)))


def expiry(seconds: float, now: datetime | None = None) -> str:
    when = (now or datetime.now(timezone.utc)) + timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expiry(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        raise Refused("the expiry is not a UTC time such as 2026-01-31T12:00:00Z") from None


def seal(token: str, claims: dict) -> str:
    return _fernet(token).encrypt(json.dumps(claims, sort_keys=True).encode()).decode()


def sign(token: str, metadata: str, path: str, expires: str) -> str:
    return hmac.new(_key(token, SIGN_LABEL), (metadata + path + expires).encode(), hashlib.sha256).hexdigest()


def verify(token: str, metadata: str, path: str, expires: str, signature: str, now: datetime | None = None) -> dict:
    """The claims of a request whose signature and expiry are good; Refused otherwise."""
    if not (metadata and expires and signature):
        raise Refused("the request carries no signature (signature, metadata and expires are required)")
    if not hmac.compare_digest(sign(token, metadata, path, expires).encode(), str(signature).encode()):
        raise Refused("the signature does not match: the link was altered or is for another host")
    if (now or datetime.now(timezone.utc)) >= parse_expiry(expires):
        raise Refused(f"the link expired at {expires}; ask for a new one")
    try:
        return json.loads(_fernet(token).decrypt(metadata.encode()))
    except (InvalidToken, ValueError):
        raise Refused("the metadata cannot be read with this host's key") from None


def download_url(base_url: str, token: str, claims: dict, filename: str, seconds: float) -> tuple[str, str]:
    """(url, expires) of a signed GET of the object claims describe, offered as filename."""
    expires = expiry(seconds)
    metadata = seal(token, dict(claims, op="download"))
    path = f"{DOWNLOAD}{metadata}/{quote(filename)}"
    sig = sign(token, metadata, path, expires)
    return f"{base_url.rstrip('/')}{path}?expires={quote(expires)}&signature={sig}", expires


def upload_params(base_url: str, token: str, claims: dict, object_id: str, seconds: float) -> dict:
    """getuploadparams' fields: the client POSTs to postURL with X-signature, X-metadata and X-expires."""
    expires = expiry(seconds)
    metadata = seal(token, dict(claims, op="upload", id=object_id))
    path = f"{UPLOAD}{object_id}"
    return {"postURL": f"{base_url.rstrip('/')}{path}", "metadata": metadata, "expires": expires,
            "signature": sign(token, metadata, path, expires)}
