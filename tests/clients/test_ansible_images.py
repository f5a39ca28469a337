"""Ansible's cs_image_store, cs_template and cs_iso (ngine_io.cloudstack) against a live volstack server, on a
Simulator datacenter: tests/clients/playbook_images.yml adds an NFS image store, registers a template and an
ISO (the Simulator host answers the downloads), runs again without changes, then removes all three."""
from pathlib import Path

import pytest

from clienttools import playbook_runner
from support import add_datacenter, client

PLAYBOOK = Path(__file__).with_name("playbook_images.yml")


@pytest.fixture
def dc(server):
    api = client(server)
    dc = add_datacenter(api, "ans-img-zone", "ans-img-pod", "ans-img-cluster", ["http://ans-sim"])
    return dict(api=api, zone=dc["zone"])


@pytest.mark.slow
def test_image_store_template_and_iso_playbook(dc, server, tmp_path):
    api, play = dc["api"], playbook_runner(server, tmp_path, PLAYBOOK)
    _, first = play()
    assert first["changed"] == 3, first
    store = api.listImageStores(name="ans-images")["imagestore"][0]
    assert (store["providername"], store["url"], store["zoneid"]) == ("NFS", "nfs://10.0.0.2/images", dc["zone"]["id"])
    tmpl = api.listTemplates(templatefilter="self", name="ans-tiny")["template"][0]
    assert (tmpl["format"], tmpl["hypervisor"], tmpl["ispublic"], tmpl["ostypename"]) == \
        ("QCOW2", "KVM", True, "Debian GNU/Linux 12 (64-bit)")
    iso = api.listIsos(isofilter="self", name="ans-tools")["iso"][0]
    assert (iso["format"], iso["bootable"]) == ("ISO", True)

    proc, again = play()
    assert again["changed"] == 0, proc.stdout

    _, gone = play(images_state="absent")
    assert gone["changed"] == 3, gone
    assert api.listTemplates(templatefilter="self", name="ans-tiny") == {}
    assert api.listIsos(isofilter="self", name="ans-tools") == {}
    assert api.listImageStores(name="ans-images") == {}
