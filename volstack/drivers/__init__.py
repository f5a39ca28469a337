"""Control-plane storage drivers: what to ask a host (or an array) to do for each kind of pool.

A driver is chosen by the pool's provider name. Optional abilities are declared as data in
CAPABILITIES, which services and the allocator read; services never test provider names.
"""
from volstack.drivers.default import DefaultPrimaryDriver
from volstack.drivers.rbd import RbdPrimaryDriver

DRIVERS = {"DefaultPrimary": DefaultPrimaryDriver(), "RBD": RbdPrimaryDriver()}
# URL schemes that CloudStack's DefaultPrimary provider accepts but a more specific driver here serves
SCHEMES = {"rbd": "RBD"}


def driver_for(provider: str, url: str | None = None):
    from volstack.errors import InvalidParameter
    if url and (provider or "DefaultPrimary").lower() == "defaultprimary":
        provider = SCHEMES.get(url.strip().partition("://")[0].lower(), provider)
    for name, drv in DRIVERS.items():
        if name.lower() == (provider or "DefaultPrimary").lower():
            return drv
    raise InvalidParameter(f"Unknown storage provider {provider}: this management server has {', '.join(DRIVERS)}")
