"""Waiting for SIGINT or SIGTERM with nothing in the signal handler that takes a lock.

A handler that sets a threading.Event takes the Event's lock; a second signal that arrives while the first
handler (or the main thread's wait) holds that lock deadlocks the process for good. Seen: the agent of a killed
`volstack up` stuck forever in Event.set after two SIGTERMs, holding its state directory's lock. Here the handler
only writes a byte to a pipe and the waiter reads it.
"""
import os
import signal


class StopSignal:
    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        for sig in signals:
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        try:
            os.write(self._w, b"!")
        except BlockingIOError:        # the pipe is full: a stop was asked for already
            pass

    def wait(self) -> None:
        """Returns once a signal came (at once if one came before)."""
        os.read(self._r, 1)
