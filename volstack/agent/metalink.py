"""Metalink files: Metalink 4 (RFC 5854, `urn:ietf:params:xml:ns:metalink`) and the older 3.0 format
(`http://www.metalinker.org/`), reduced to what a download needs: mirrors, size and hashes of the first
`<file>` (CloudStack, too, takes the first file).

    ml = parse(xml_bytes)
    ml.mirrors      # [Mirror(url, priority, location)], in document order
    ml.hashes       # {"sha256": "hex", ...} (algorithm names as in hashlib)
    ml.size         # bytes or None

Priorities follow Metalink 4: 1 is the most preferred, a missing priority sorts last. Metalink 3's
`preference` (100 = most preferred) is turned into a priority as 101 - preference.
"""
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from volstack.agent.errors import InvalidArgument

NS4 = "urn:ietf:params:xml:ns:metalink"
NS3 = "http://www.metalinker.org/"
MAX_BYTES = 1 << 20          # a metalink is a few kilobytes; anything this large is not one
NO_PRIORITY = 1000000        # sorts after every real priority (Metalink 4 allows 1..999999)

HASH_NAMES = {"md5": "md5", "sha1": "sha1", "sha224": "sha224", "sha256": "sha256", "sha384": "sha384",
              "sha512": "sha512"}


@dataclass
class Mirror:
    url: str
    priority: int = NO_PRIORITY
    location: str | None = None


@dataclass
class Metalink:
    name: str | None = None
    size: int | None = None
    mirrors: list = field(default_factory=list)
    hashes: dict = field(default_factory=dict)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _int(text, what: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise InvalidArgument(f"metalink: {what} {text.strip()!r} is not a number") from None


def _hash_name(kind: str | None) -> str | None:
    return HASH_NAMES.get(re.sub(r"[^a-z0-9]", "", (kind or "").lower()))


def parse(data: bytes) -> Metalink:
    if len(data) > MAX_BYTES:
        raise InvalidArgument(f"metalink: {len(data)} bytes is too large for a metalink file")
    # metalinks never need a DTD; refusing one rules out entity expansion tricks in untrusted XML
    if re.search(rb"<!(DOCTYPE|ENTITY)", data, re.I):
        raise InvalidArgument("metalink: DOCTYPE and ENTITY declarations are not allowed")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise InvalidArgument(f"metalink: not well-formed XML ({e})") from None
    if _local(root.tag) != "metalink":
        raise InvalidArgument(f"metalink: the document element is <{_local(root.tag)}>, not <metalink>")
    ns = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    files = [e for e in root.iter() if _local(e.tag) == "file"]
    if not files:
        raise InvalidArgument("metalink: no <file> element")
    ml = _parse_v3(files[0]) if ns == NS3 or root.get("version", "").startswith("3") else _parse_v4(files[0])
    if not ml.mirrors:
        raise InvalidArgument("metalink: the file has no <url> to download from")
    return ml


def _children(elem, name: str):
    return [e for e in elem if _local(e.tag) == name]


def _parse_v4(f) -> Metalink:
    ml = Metalink(name=f.get("name"))
    for e in _children(f, "size"):
        ml.size = _int(e.text, "size")
    for e in _children(f, "hash"):
        alg = _hash_name(e.get("type"))
        if alg and e.text and e.text.strip():
            ml.hashes[alg] = e.text.strip().lower()
    for e in _children(f, "url"):
        if e.text and e.text.strip():
            prio = _int(e.get("priority"), "priority")
            ml.mirrors.append(Mirror(e.text.strip(), NO_PRIORITY if prio is None else prio, e.get("location")))
    return ml


def _parse_v3(f) -> Metalink:
    ml = Metalink(name=f.get("name"))
    for e in _children(f, "size"):
        ml.size = _int(e.text, "size")
    for v in _children(f, "verification"):
        for e in _children(v, "hash"):
            alg = _hash_name(e.get("type"))
            if alg and e.text and e.text.strip():
                ml.hashes[alg] = e.text.strip().lower()
    for r in _children(f, "resources"):
        for e in _children(r, "url"):
            if not (e.text and e.text.strip()):
                continue
            pref = _int(e.get("preference"), "preference")
            ml.mirrors.append(Mirror(e.text.strip(), NO_PRIORITY if pref is None else max(1, 101 - pref),
                                     e.get("location")))
    return ml


def order(mirrors: list, location: str | None = None) -> list:
    """Mirrors in the order to try them: the preferred location first, then by priority, then as listed."""
    loc = (location or "").lower()
    ranked = sorted(enumerate(mirrors), key=lambda im: (not loc or (im[1].location or "").lower() != loc,
                                                        im[1].priority, im[0]))
    return [m for _, m in ranked]
