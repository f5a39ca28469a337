"""Fixed catalogues: guest OS types, storage providers, hypervisors. Ids are stable across installs."""
import uuid

_NS = uuid.UUID("6f1c2f64-3a53-4c57-9d7a-5a0d2b9e6a11")

OS_CATEGORIES = ["CentOS", "Debian", "Ubuntu", "RedHat", "Windows", "Other"]
OS_TYPES = [
    ("Other Linux (64-bit)", "Other"), ("Other (64-bit)", "Other"), ("Other (32-bit)", "Other"),
    ("Debian GNU/Linux 11 (64-bit)", "Debian"), ("Debian GNU/Linux 12 (64-bit)", "Debian"),
    ("Ubuntu 20.04 LTS", "Ubuntu"), ("Ubuntu 22.04 LTS", "Ubuntu"), ("Ubuntu 24.04 LTS", "Ubuntu"),
    ("CentOS 7", "CentOS"), ("Rocky Linux 9", "RedHat"), ("Red Hat Enterprise Linux 9", "RedHat"),
    ("Windows Server 2019 (64-bit)", "Windows"), ("Windows Server 2022 (64-bit)", "Windows"),
]


def os_type_id(description: str) -> str:
    return str(uuid.uuid5(_NS, "ostype:" + description))


def os_category_id(name: str) -> str:
    return str(uuid.uuid5(_NS, "oscategory:" + name))


def os_types() -> list[dict]:
    return [{"id": os_type_id(d), "description": d, "name": d, "oscategoryid": os_category_id(c),
             "oscategoryname": c, "isuserdefined": False} for d, c in OS_TYPES]


def os_type(uuid_: str) -> dict | None:
    return next((t for t in os_types() if t["id"] == uuid_), None)


# Providers known to this management server, by store role. Storage subsystems add theirs.
STORAGE_PROVIDERS: dict[str, list[str]] = {"primary": [], "image": []}


def register_storage_provider(role: str, name: str) -> None:
    if name not in STORAGE_PROVIDERS[role]:
        STORAGE_PROVIDERS[role].append(name)
