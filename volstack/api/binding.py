"""Turn request parameters into typed values, checked against the command's declaration."""
import re
import uuid as _uuid
from datetime import datetime

from volstack.api.registry import (BOOLEAN, DATE, INTEGER, LIST, LONG, MAP, SHORT, STRING, TZDATE, UUID,
                                   Command)
from volstack.errors import InvalidParameter, PermissionDenied
from volstack.services.lookup import exists

_MAP_KEY = re.compile(r"^([a-z0-9_]+)\[(\d+)\]\.([A-Za-z0-9_\-.:]+)$")
_RANGES = {SHORT: (-2 ** 15, 2 ** 15 - 1), INTEGER: (-2 ** 31, 2 ** 31 - 1), LONG: (-2 ** 63, 2 ** 63 - 1)}
TZ_FORMATS = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%SZ%z", "%Y-%m-%d %H:%M:%S")


class Params(dict):
    """Bound parameters; absent ones read as None."""

    def __getattr__(self, name):
        return self.get(name)


def split_maps(raw: dict) -> tuple[dict, dict]:
    """Separate `name[i].field=value` pairs into {name: {i: {field: value}}}."""
    plain, maps = {}, {}
    for k, v in raw.items():
        if "[" not in k and "]" not in k:
            plain[k] = v
            continue
        m = _MAP_KEY.match(k)
        if not m:
            raise InvalidParameter(f"Unable to decode parameter {k}: map parameters are written name[index].field=value")
        maps.setdefault(m.group(1), {}).setdefault(m.group(2), {})[m.group(3)] = v
    return plain, maps


def bad_value(cmd: Command, p, value) -> InvalidParameter:
    return InvalidParameter(f"Unable to execute API command {cmd.name.lower()} due to invalid value {value!r} for "
                            f"parameter {p.name}: expected {_EXPECT.get(p.type, p.type)}")


_EXPECT = {UUID: "a uuid", INTEGER: "an integer", LONG: "an integer", SHORT: "an integer",
           BOOLEAN: "true or false", DATE: "a date yyyy-MM-dd, yyyy-MM-dd HH:mm:ss or yyyy-MM-dd'T'HH:mm:ssZ",
           TZDATE: "a date yyyy-MM-dd, yyyy-MM-dd HH:mm:ss or yyyy-MM-dd'T'HH:mm:ssZ",
           LIST: "a comma-separated list", MAP: "name[index].field=value pairs", STRING: "a string"}


def _uuid_ok(v: str) -> bool:
    try:
        _uuid.UUID(v)
        return True
    except ValueError:
        return False


def _check_entity(s, cmd, p, v):
    if not _uuid_ok(v):
        raise bad_value(cmd, p, v)
    if p.entity and not exists(s, p.entity, v):
        raise InvalidParameter(f"Unable to execute API command {cmd.name.lower()} due to invalid value. Invalid "
                               f"parameter {p.name} value={v} due to incorrect long value format, or entity does not "
                               f"exist or due to incorrect parameter annotation for the field in api cmd class.")


def convert(s, cmd: Command, p, v):
    if "\x00" in v:       # PostgreSQL cannot store it (a 530 deep in the flush); no parameter needs it
        raise InvalidParameter(f"Unable to execute API command {cmd.name.lower()}: parameter {p.name} contains a NUL "
                               "character")
    if v.strip() in p.special:
        return [v.strip()] if p.type == LIST else v.strip()
    if p.type == STRING:
        if len(v) > p.length:
            raise InvalidParameter(f"Value greater than max allowed length {p.length} for param: {p.name}")
        return v
    if p.type in _RANGES:
        try:
            n = int(v.strip())
        except ValueError:
            raise bad_value(cmd, p, v) from None
        lo, hi = _RANGES[p.type]
        if not lo <= n <= hi:
            raise bad_value(cmd, p, v)
        return n
    if p.type == BOOLEAN:
        low = v.strip().lower()
        if low not in ("true", "false"):
            raise bad_value(cmd, p, v)
        return low == "true"
    if p.type == UUID:
        _check_entity(s, cmd, p, v)
        return v
    if p.type == LIST:
        items = [x.strip() for x in v.split(",") if x.strip()]
        if p.entity:
            for x in (x for x in items if x not in p.special):
                _check_entity(s, cmd, p, x)
        elif any(len(x) > p.length for x in items):
            raise InvalidParameter(f"Value greater than max allowed length {p.length} for param: {p.name}")
        return items
    if p.type in (DATE, TZDATE):       # CloudStack's forms: yyyy-MM-dd, yyyy-MM-dd HH:mm:ss and the full one
        for fmt in ("%Y-%m-%d",) + TZ_FORMATS:
            try:
                return datetime.strptime(v.strip(), fmt).isoformat()
            except ValueError:
                continue
        raise bad_value(cmd, p, v)
    raise AssertionError(f"undeclared parameter type {p.type}")


_WHO = {"root": "the root administrator", "domain": "administrators"}


def bind(s, cmd: Command, raw: dict, account_type: int | None = None) -> Params:
    """raw: lowercased parameter names -> values (strings). account_type: the caller's; a parameter it may not pass
    is refused (CloudStack drops it silently; a placement or flag that is silently ignored would be a lie)."""
    plain, maps = split_maps(raw)
    out = Params()
    for p in cmd.params:
        if account_type is not None and not p.allowed(account_type) and (
                p.name in maps or plain.get(p.name) not in (None, "")):
            raise PermissionDenied(f"Parameter {p.name} of {cmd.name} is for {_WHO[p.access]} only")
        if p.type == MAP:
            if p.name in maps:
                if any("\x00" in k + v for row in maps[p.name].values() for k, v in row.items()):
                    raise InvalidParameter(f"Unable to execute API command {cmd.name.lower()}: parameter {p.name} "
                                           "contains a NUL character")
                out[p.name] = maps[p.name]
            elif p.name in plain and plain[p.name] != "":
                raise InvalidParameter(f"Parameter {p.name} is a map: pass it as {p.name}[0].key=value")
            elif p.required:
                raise missing(cmd, p)
            continue
        v = plain.get(p.name)
        if v is None or (v == "" and p.type != STRING):
            if p.required:
                raise missing(cmd, p)
            continue
        if v == "" and p.required:
            raise missing(cmd, p)
        out[p.name] = convert(s, cmd, p, v)
    return out


def missing(cmd, p) -> InvalidParameter:
    return InvalidParameter(f"Unable to execute API command {cmd.name.lower()} due to missing parameter {p.name}")
