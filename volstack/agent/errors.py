"""Error kinds carried by the agent protocol.

A command fails with one of these; the server answers `{"ok": false, "error": text, "kind": name}` with
the HTTP status below, and `client.AgentClient` turns the kind back into a `volstack.errors` exception.
Texts are for a person: they say what is wrong and, where possible, what to do about it.
"""


class AgentError(Exception):
    kind = "Failed"
    status = 500

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class NotFound(AgentError):
    kind = "NotFound"
    status = 404


class InvalidArgument(AgentError):
    kind = "InvalidArgument"
    status = 400


class Busy(AgentError):
    kind = "Busy"
    status = 409


class Unavailable(AgentError):
    """Something the command needs on this host cannot be reached: an NFS server, a pool directory."""
    kind = "Unavailable"
    status = 503


class Failed(AgentError):
    kind = "Failed"
    status = 500


KINDS = {c.kind: c for c in (NotFound, InvalidArgument, Busy, Unavailable, Failed)}
