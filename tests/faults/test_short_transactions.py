"""Seen point 5 of issue 12: reads never wait for a writer, and no write transaction stays open across a
host's work, so the API keeps answering while stops and detaches run."""
import sqlite3
import time

import pytest
import requests
from cs import CloudStackApiException

from tests.support import client


def test_reads_answer_while_another_writer_holds_the_database(server):
    """A writer that holds SQLite's lock (here: a raw connection; in the issue: a stop waiting for its guest)
    must not stall listZones or queryAsyncJobResult: they read the settings they need without a write lock,
    and a failure there is still an error envelope, never a bare plain-text 500."""
    api = client(server, timeout=5)
    zone = api.createZone(name="z1", networktype="Advanced")["zone"]
    db = sqlite3.connect(server.db.engine.url.database, isolation_level=None, timeout=1)
    db.execute("BEGIN IMMEDIATE")
    try:
        server._cache.clear()     # the next request reads json.content.type from the database
        started = time.monotonic()
        assert api.listZones(id=zone["id"])["zone"][0]["name"] == "z1"
        server._cache.clear()
        with pytest.raises(CloudStackApiException) as exc:
            api.queryAsyncJobResult(jobid="4f1d3c2e-0000-4000-8000-000000000000")
        assert exc.value.response.status_code == 431, exc.value.response.text
        assert time.monotonic() - started < 2
    finally:
        db.execute("ROLLBACK")
        db.close()


def test_an_unreadable_setting_still_gives_an_error_envelope(server, monkeypatch):
    def broken(*a, **k):
        raise sqlite3.OperationalError("database is locked")
    monkeypatch.setattr(server.settings, "get", broken)
    server._cache.clear()
    r = requests.get(server.endpoint, params={"command": "queryAsyncJobResult", "response": "json",
                                              "jobid": "x"}, timeout=10)
    assert r.status_code == 401 and r.json()["queryasyncjobresultresponse"]["errorcode"] == 401
