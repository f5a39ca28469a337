"""volstack/private.py: a data or state directory written before files were private is tightened at start-up."""
import os
import stat

from volstack.private import tighten


def test_tighten_strips_group_and_other_bits_and_leaves_links_alone(tmp_path):
    data = tmp_path / "data"
    (data / "agent" / "vms").mkdir(parents=True)
    (data / "volstack.db").write_text("db")
    (data / "agent" / "vms" / "console.log").write_text("login: root")
    (data / "run.sh").write_text("#!/bin/sh\n")
    outside = tmp_path / "outside"
    outside.write_text("not ours to change")
    for p, mode in ((data, 0o755), (data / "agent", 0o755), (data / "agent" / "vms", 0o775),
                    (data / "volstack.db", 0o644), (data / "agent" / "vms" / "console.log", 0o664),
                    (data / "run.sh", 0o755), (outside, 0o644)):
        os.chmod(p, mode)
    os.symlink(outside, data / "link")
    tighten(data)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.lstat().st_mode) for p in [data, *data.rglob("*")]
             if not p.is_symlink()}
    assert modes == {"data": 0o700, "data/agent": 0o700, "data/agent/vms": 0o700, "data/volstack.db": 0o600,
                     "data/agent/vms/console.log": 0o600, "data/run.sh": 0o700}
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644      # the link was not followed
