"""Response envelopes in JSON and XML, exactly as CloudStack's serializer shapes them."""
import json
from datetime import datetime
from xml.sax.saxutils import escape

from volstack import CLOUDSTACK_VERSION
from volstack.api.registry import Lst, Obj, Success

DATE_FORMAT = "%Y-%m-%dT%H:%M:%S+0000"


def date(dt: datetime | None) -> str | None:
    return dt.strftime(DATE_FORMAT) if dt else None


def body_of(result) -> dict:
    """The inside of <command>response for a handler result."""
    if isinstance(result, Obj):
        return {result.key: result.data}
    if isinstance(result, Lst):
        if not result.count and not result.items:
            return {}
        return {"count": result.count, result.key: result.items}
    if isinstance(result, Success):
        out = {"success": True}
        if result.displaytext:
            out["displaytext"] = result.displaytext
        return out
    return result


def error_body(code: int, cserror: int, text: str) -> dict:
    return {"uuidList": [], "errorcode": code, "cserrorcode": cserror, "errortext": text}


def render(envelope_key: str, body: dict, fmt: str, json_type: str) -> tuple[bytes, str]:
    if fmt == "json":
        return json.dumps({envelope_key: body}, separators=(",", ":")).encode(), json_type
    xml = ['<?xml version="1.0" encoding="UTF-8"?>', f'<{envelope_key} cloud-stack-version="{CLOUDSTACK_VERSION}">']
    for k, v in body.items():
        _xml(xml, k, v)
    xml.append(f"</{envelope_key}>")
    return "".join(xml).encode(), "text/xml; charset=UTF-8"


def _xml(out: list, key: str, value) -> None:
    if isinstance(value, list):
        for item in value:
            _xml(out, key, item)
    elif isinstance(value, dict):
        out.append(f"<{key}>")
        for k, v in value.items():
            _xml(out, k, v)
        out.append(f"</{key}>")
    elif value is not None:
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out.append(f"<{key}>{escape(text)}</{key}>")
