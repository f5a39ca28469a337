"""The guard of issue 20: every program and system file the scripts, the agent and the tests use comes from a
Debian package the install scripts name (or one every Debian 12 system has), so a package that happens to be
on one machine never stands in for an install step (syslinux-common was such a package)."""
import pytest

import install_guard as guard

HOST = (guard.ROOT / "scripts" / "install-host.sh").read_text()
INSTALL = (guard.ROOT / "scripts" / "install.sh").read_text()


@pytest.fixture(scope="module")
def scan():
    return guard.all_uses(), guard.Dpkg.load()


def test_every_program_and_file_comes_from_an_installed_package(scan):
    uses, dpkg = scan
    assert guard.problems(uses, guard.named_packages(HOST, INSTALL), dpkg) == []


def test_the_scan_finds_what_the_build_scripts_and_the_agent_use(scan):
    """The extraction itself: a scanner that found nothing would pass the test above vacuously."""
    uses, _ = scan
    found = {(u.where.split(":")[0], u.name) for u in uses}
    for where, name in [("scripts/build-iso.sh", "/usr/lib/syslinux/modules/bios/ldlinux.c32"),
                        ("scripts/build-iso.sh", "/usr/lib/ISOLINUX/isolinux.bin"),
                        ("scripts/build-iso.sh", "xorriso"), ("scripts/build-template.sh", "mkfs.fat"),
                        ("scripts/build-template.sh", "syslinux"), ("scripts/build-template.sh", "mcopy"),
                        ("scripts/ceph-up.sh", "ceph-mon"), ("scripts/ceph-up.sh", "ss"),
                        ("volstack/agent/images.py", "qemu-img"), ("volstack/agent/qemu.py", "qemu-system-x86_64"),
                        ("volstack/agent/snapshots.py", "qemu-storage-daemon"),
                        ("tests/nfsserver.py", "ganesha.nfsd"), ("tests/guest.py", "qemu-system-x86_64"),
                        ("tests/pgserver.py", "/usr/lib/postgresql/*/bin/initdb")]:
        assert (where, name) in found, f"{name} in {where} was not found by the scan"
    # words in messages, case patterns, heredoc bodies (the guest's /init) and arrays are not commands
    programs = {u.name for u in uses if u.kind == "program"}
    assert not programs & {"is", "missing", "memstore", "insmod", "qemu-utils", "--test", "cloudmonkey"}


def test_the_agent_runs_only_the_programs_it_declares(scan):
    """volstack/agent/programs.py is the one list of the agent's programs: the code uses its names."""
    from volstack.agent import programs
    uses, _ = scan
    used = {u.name for u in uses if u.kind == "program" and u.where.startswith("volstack/")}
    assert used <= set(programs.PACKAGES), used - set(programs.PACKAGES)


def test_the_declared_packages_are_the_ones_that_provide_the_programs(scan):
    from volstack.agent import programs
    _, dpkg = scan
    uses = [u for u in guard.agent_declared() if u.kind == "program"]
    found = {u.name: guard.resolve(u) for u in uses}
    owner = guard.packages_of([f[0] for f in found.values() if f])
    for name, files in found.items():
        if files:
            assert owner[files[0]] == programs.PACKAGES[name], name
        else:
            assert name in programs.OPTIONAL, f"{name} is not installed"


@pytest.mark.parametrize("package, what", [("syslinux-common", "ldlinux.c32"), ("xorriso", "xorriso"),
                                           ("iproute2", "ss")])
def test_the_guard_fails_when_a_package_is_dropped_from_the_install_scripts(scan, package, what):
    uses, dpkg = scan
    dropped = "\n".join(line for line in HOST.splitlines() if not line.strip().startswith(package + " "))
    assert dropped != HOST
    found = guard.problems(uses, guard.named_packages(dropped, INSTALL), dpkg)
    assert any(what in p and f"Debian package {package}," in p for p in found), found
