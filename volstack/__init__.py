"""volstack: a storage control plane for KVM clouds that speaks CloudStack's API."""

__version__ = "0.1.0"
# The CloudStack API version volstack reports to clients (cloud-stack-version, listCapabilities).
CLOUDSTACK_VERSION = "4.22.0.0"
