"""Importing this package declares every API command in volstack.api.registry.API."""
from volstack.api.commands import accounts, config, infra, jobs, misc  # noqa: F401
