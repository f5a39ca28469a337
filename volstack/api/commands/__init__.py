"""Importing this package declares every API command in volstack.api.registry.API."""
from volstack.api.commands import accounts, config, infra, jobs, misc  # noqa: F401
from volstack.api.commands import pools  # noqa: F401,E402
from volstack.api.commands import offerings  # noqa: F401,E402
from volstack.api.commands import volumes  # noqa: F401,E402
from volstack.api.commands import vms  # noqa: F401,E402
from volstack.api.commands import imagestores, templates  # noqa: F401,E402
from volstack.api.commands import uploads  # noqa: F401,E402
from volstack.api.commands import dd_certificates  # noqa: F401,E402
from volstack.api.commands import snapshots  # noqa: F401,E402
from volstack.api.commands import snapshot_policies  # noqa: F401,E402
from volstack.api.commands import vm_snapshots  # noqa: F401,E402
from volstack.api.commands import transfers  # noqa: F401,E402
from volstack.api.commands import tags  # noqa: F401,E402
from volstack.api.commands import guest_os  # noqa: F401,E402
from volstack.api.commands import projects  # noqa: F401,E402  (last: adds projectid to declared commands)
