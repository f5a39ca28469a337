"""Encrypted images: LUKS through QEMU's own drivers, the passphrase only ever in secret objects.

The management server sends `encryption: {"format": "luks", "secret": <passphrase>}` with a volume. The
image's recorded format says where the LUKS layer lives:
- qcow2 (file and NFS pools): qcow2's built-in LUKS encryption (`encrypt.format=luks`);
- raw (RBD): QEMU's `luks` format driver over the protocol node, the image being a LUKS header and payload.

The passphrase reaches qemu-img as a `secret` object read from a 0600 file that exists for one call, and
QEMU as a QMP `object-add`; never on a command line, in vm.json or in a log. The passphrase is 256 random
bits, so PBKDF2 stretching buys nothing: key slots use a short iteration time (opening an image costs
milliseconds instead of seconds).
"""
import base64
import json
import os
import re
import tempfile
from contextlib import contextmanager

from volstack.agent.errors import Failed, InvalidArgument

FORMATS = ("luks",)
ITER_TIME_MS = 10
_SECRET_DIR = os.environ.get("VOLSTACK_SECRET_DIR") or "/dev/shm"   # tmpfs: never written to a disk


def check(enc) -> dict | None:
    """The encryption argument of a command: None, or {"format": "luks", "secret": str}."""
    if enc is None:
        return None
    if not isinstance(enc, dict) or enc.get("format") not in FORMATS:
        raise InvalidArgument("encryption must be an object {format: luks, secret: <passphrase>}")
    secret = enc.get("secret")
    if not isinstance(secret, str) or not 16 <= len(secret) <= 1024:
        raise InvalidArgument("the encryption passphrase is missing or malformed (16 to 1024 characters); the "
                              "management server could not provide this volume's passphrase")
    return {"format": enc["format"], "secret": secret}


def secret_id(name: str) -> str:
    """The QEMU object id of an image's passphrase (one per image name and process)."""
    return "luks-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)[:120]


@contextmanager
def secret_file(enc: dict, sid: str):
    """qemu-img arguments naming a 0600 file with the passphrase, removed when the call is over."""
    d = _SECRET_DIR if os.path.isdir(_SECRET_DIR) and os.access(_SECRET_DIR, os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="vs-", dir=d)       # mkstemp: 0600, a name nobody can guess
    try:
        with os.fdopen(fd, "w") as f:
            f.write(enc["secret"])
        yield ["--object", f"secret,id={sid},file={path},format=raw"]
    finally:
        os.unlink(path)


@contextmanager
def scratch_dir():
    """A private directory (0700, on tmpfs when there is one) removed with what it holds."""
    d = _SECRET_DIR if os.path.isdir(_SECRET_DIR) and os.access(_SECRET_DIR, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="vs-", dir=d) as path:
        yield path


def qmp_secret(enc: dict, sid: str) -> dict:
    """object-add arguments for QEMU (over the QMP socket, base64 so any byte survives JSON)."""
    return {"qom-type": "secret", "id": sid, "format": "base64",
            "data": base64.b64encode(enc["secret"].encode()).decode()}


def qemu_format(fmt: str) -> str:
    """The QEMU format driver of an encrypted image whose recorded format is fmt."""
    return "qcow2" if fmt == "qcow2" else "luks"


def node(fmt: str, file: dict | str, sid: str) -> dict:
    """Format-node options opening the encrypted image over `file` (a protocol node or its name)."""
    if fmt == "qcow2":
        return {"driver": "qcow2", "encrypt": {"format": "luks", "key-secret": sid}, "file": file}
    return {"driver": "luks", "key-secret": sid, "file": file}


def target(pool, name: str, fmt: str, sid: str) -> str:
    """What qemu-img is given for an encrypted image: its whole node as json (the driver is explicit)."""
    return "json:" + json.dumps(node(fmt, pool.blockdev(name), sid), separators=(",", ":"))


def create_options(sid: str) -> str:
    """qemu-img create/convert -o options that make a qcow2 image LUKS-encrypted."""
    return f"encrypt.format=luks,encrypt.key-secret={sid},encrypt.iter-time={ITER_TIME_MS}"


def keyslot_error(text: str) -> bool:
    return "Invalid password" in text or "cannot unlock" in text.lower() or "key slot" in text.lower()


def header_error(text: str) -> bool:
    return "not in LUKS format" in text or ("LUKS" in text and "header" in text.lower())


def explain(text: str, name: str) -> Exception | None:
    """A clear error for an image that cannot be opened with its passphrase, or None."""
    if keyslot_error(text):
        return Failed(f"volume {name}: the stored passphrase does not open the image's LUKS key slots (wrong or "
                      f"corrupted passphrase); the image is untouched ({text})")
    if header_error(text) or "No encryption in image header" in text:
        return Failed(f"volume {name}: the image's LUKS header is damaged or missing, so it cannot be opened; the "
                      f"image is untouched ({text})")
    return None


def redact(value):
    """A copy of command arguments without passphrases, for anything the agent keeps (its task table)."""
    if isinstance(value, dict):
        return {k: ({**v, "secret": "(redacted)"} if k in ("encryption", "src_encryption") and isinstance(v, dict)
                    else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
