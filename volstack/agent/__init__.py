"""The host agent: one per KVM host, executing storage and hypervisor commands for the management server.

Layers inside the package (imports point down only):

    main.py, __main__.py   command line: `volstack agent` / `python -m volstack.agent`
    server.py              HTTP, bearer-token auth, request-id idempotency, async tasks (state dir)
    commands.py            the command table: argument checking, locks, pool and hypervisor calls
    images.py              pool adapters (local directory, nfs:// through QEMU's userspace driver)
    qemu.py, simulator.py  hypervisor adapters (QEMU through QMP; in-memory); qemu's mixins migration.py
                           (live migration) and cdrom.py (the guests' CD drive)
    qmp.py, nfs3.py        minimal QMP and NFSv3 clients
    errors.py              the error kinds the protocol carries
    programs.py            every program and system file the agent runs or loads, with its Debian package
                           (tests/test_install_guard.py checks the install scripts provide each)
client.py is what the management server uses; it imports nothing else from the package but errors.
"""

PROTOCOL = 1
