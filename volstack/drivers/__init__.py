"""Control-plane storage drivers: what to ask a host (or an array) to do for each kind of pool.

A driver is chosen by the pool's provider name. Optional abilities are declared as data in
CAPABILITIES, which services and the allocator read; services never test provider names.
"""
from volstack.drivers.default import DefaultPrimaryDriver

DRIVERS = {"DefaultPrimary": DefaultPrimaryDriver()}


def driver_for(provider: str):
    from volstack.errors import InvalidParameter
    for name, drv in DRIVERS.items():
        if name.lower() == (provider or "DefaultPrimary").lower():
            return drv
    raise InvalidParameter(f"Unknown storage provider {provider}: this management server has {', '.join(DRIVERS)}")
