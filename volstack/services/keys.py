"""Rotating the server key (`volstack rotate-key`): every secret stored encrypted is re-wrapped, nothing else.

Volume passphrases are re-encrypted, not changed: the LUKS key slots on the pools hold what the passphrase
unlocks, so no image is touched. The API secret keys, host credentials and RBD pool secrets are re-wrapped in
the same transaction, or nothing is. The new key is written beside the old one (`<key file>.new`, 0600) before
the commit and takes the old one's place after it; a run interrupted in between is finished by running again
(rows already under the new key are recognised). Stop the management servers first: each holds the key it
started with.
"""
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select

from volstack.db.models import Host, User
from volstack.db.storage_models import Passphrase, StoragePool
from volstack.errors import InvalidParameter

# (model, column, what) of every value stored with crypto.encrypt
ENCRYPTED = [(Passphrase, "passphrase", "volume passphrases"), (User, "secret_key", "API secret keys"),
             (Host, "credential", "host credentials"), (StoragePool, "secret", "storage pool secrets")]


def _new_key(path: Path) -> bytes:
    new = path.with_name(path.name + ".new")
    if new.exists():                       # an interrupted rotation: finish it with the key it started
        return new.read_bytes().strip()
    key = Fernet.generate_key()
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


def rotate(db, key_file) -> dict:
    """Re-wrap every stored secret under a new key and install it as key_file; {what: count}."""
    path = Path(key_file)
    if not path.exists():
        raise InvalidParameter(f"No key file at {path}")
    old, new = Fernet(path.read_bytes().strip()), Fernet(_new_key(path))
    readable = MultiFernet([new, old])
    counts = {}
    with db.session() as s:
        for model, column, what in ENCRYPTED:
            n = 0
            for row in s.scalars(select(model).where(getattr(model, column).isnot(None))):
                try:
                    plain = readable.decrypt(getattr(row, column).encode())
                except InvalidToken:
                    raise InvalidParameter(f"One of the {what} (row {row.id} of {model.__tablename__}) cannot be "
                                           f"decrypted with {path}: wrong key file for this database; nothing "
                                           "was changed") from None
                setattr(row, column, new.encrypt(plain).decode())
                n += 1
            counts[what] = n
    os.replace(path.with_name(path.name + ".new"), path)
    return counts
