"""Secrets at rest: API secret keys, host credentials, array passwords are stored Fernet-encrypted.

The key lives in a file beside the database (or wherever `--key-file` points); every management
server of one installation must be given the same file.
"""
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

_fernet: Fernet | None = None


def load_key(path: str | os.PathLike) -> None:
    global _fernet
    p = Path(path)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
    _fernet = Fernet(p.read_bytes().strip())


def _f() -> Fernet:
    if _fernet is None:
        raise RuntimeError("encryption key not loaded (crypto.load_key)")
    return _fernet


def encrypt(plain: str) -> str:
    return _f().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _f().decrypt(token.encode()).decode()
    except InvalidToken:
        raise RuntimeError("a stored secret cannot be decrypted: wrong key file for this database") from None
