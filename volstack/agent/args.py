"""Checking the arguments of one agent command: a missing or mistyped one is the caller's error."""
from volstack.agent.errors import InvalidArgument

REQUIRED = object()


def arg(args: dict, key: str, kind=str, default=REQUIRED):
    value = args.get(key, None)
    if value is None:
        if default is REQUIRED:
            raise InvalidArgument(f"missing argument {key}")
        return default
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        expected = {str: "a string", int: "an integer", bool: "true or false", dict: "an object",
                    (int, float): "a number"}.get(kind, str(kind))
        raise InvalidArgument(f"argument {key} must be {expected}")
    return value

