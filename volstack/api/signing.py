"""CloudStack request signatures (ApiServer.verifyRequest) and signatureVersion=3 expiry."""
import base64
import hashlib
import hmac
from datetime import datetime, timezone
from urllib.parse import quote

from volstack.errors import Unauthorized

AUTH_FAILED = "unable to verify user credentials and/or request signature"
_EXPIRES_FORMATS = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%SZ")


def canonical(params: dict, keep_tilde: bool) -> str:
    """Sorted name=value pairs, values encoded as Java's URLEncoder does (+ as %20), lowercased.
    keep_tilde: Python and Go clients leave '~' raw where Java encodes it; accept both forms."""
    safe = "*-._~" if keep_tilde else "*-._"
    pairs = [f"{k}={quote(v, safe=safe)}" for k, v in sorted(params.items()) if k != "signature"]
    return "&".join(pairs).lower()


def sign(params: dict, secret: str, keep_tilde: bool = False) -> str:
    digest = hmac.new(secret.encode(), canonical(params, keep_tilde).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify(params: dict, secret: str) -> bool:
    """params: names as received (case kept) -> values, including 'signature'."""
    given = params.get("signature", "").replace(" ", "+").encode()   # a raw '+' arrives as a space
    # compared as bytes: compare_digest refuses str with non-ASCII characters (a TypeError, answered 530)
    for keep in (False, True):
        if hmac.compare_digest(sign(params, secret, keep).encode(), given):
            return True
    return False


def parse_expires(value: str) -> datetime:
    v = value.strip()
    if v.endswith("Z") and v.count("Z") == 1:
        v = v[:-1] + "+0000"
    for fmt in _EXPIRES_FORMATS:
        try:
            dt = datetime.strptime(v, fmt)
            return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(v)
    except ValueError:
        raise Unauthorized(AUTH_FAILED + f" (expires={value!r} is not a date yyyy-MM-dd'T'HH:mm:ssZ)") from None


def check_expiry(params_lower: dict) -> None:
    if params_lower.get("signatureversion", "").strip() != "3":
        return
    exp = params_lower.get("expires")
    if not exp:
        raise Unauthorized(AUTH_FAILED + " (signatureVersion=3 requires expires)")
    when = parse_expires(exp)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if when < datetime.now(timezone.utc):
        raise Unauthorized(AUTH_FAILED + " (the request expired at " + exp + ")")
