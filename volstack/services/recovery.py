"""No object stays in a transitional state: a failed job's objects are settled, and a sweep catches the rest.

A job moves VMs and volumes through transitional states (Starting, Creating, Migrating…) and often commits
them mid-job, before host work, so that a crash leaves something to settle. When the job then fails, rolling
back its session undoes only what was not committed yet. `settle_moved` takes every object the job moved
(Lifecycle.fire notes them in the session) and settles those still transitional, with the job's error as the
reason. `TransitionalSweep` settles whatever still slips through — a transitional object no job works on — once
it has stayed so for a bounded time.
"""
import time

from sqlalchemy import select

from volstack.db.models import utcnow
from volstack.db.storage_models import VirtualMachine, Volume
from volstack.services import reconcile, vms, volumes

VM_TRANSITIONAL = ("Starting", "Stopping", "Migrating", "Expunging")
VOLUME_TRANSITIONAL = tuple(volumes.SETTLE_BACK)


def _settle(s, ctx, row, reason: str) -> None:
    if isinstance(row, VirtualMachine) and row.state in VM_TRANSITIONAL:
        vms.settle(s, ctx, row, reason)
    elif isinstance(row, Volume) and row.state in VOLUME_TRANSITIONAL:
        volumes.settle(s, ctx, row, "", reason=reason)


def settle_moved(db, ctx, moved: dict, reason: str) -> None:
    """moved: {(model, id): lifecycle name} from the failed job's session."""
    # volumes first: a VM's settle asks its host, which is pointless while its disks are still mid-creation
    for model, row_id in sorted(moved, key=lambda k: k[0] is VirtualMachine):
        if model not in (VirtualMachine, Volume):
            continue
        with db.session() as s:
            row = s.get(model, row_id)
            if row is not None:
                _settle(s, ctx, row, reason)


class TransitionalSweep:
    """Settles VMs and volumes that stayed in a transitional state with no job working on them for
    after_seconds (first seen by this server; a restarted server waits the bound again)."""

    def __init__(self, db, after_seconds: float):
        self.db, self.after = db, after_seconds
        self.seen: dict[tuple, float] = {}

    def _candidates(self, s):
        for vm in s.scalars(select(VirtualMachine).where(VirtualMachine.state.in_(VM_TRANSITIONAL),
                                                         VirtualMachine.removed.is_(None))):
            yield (VirtualMachine, vm.id, vm.state), [vm.uuid, *s.scalars(select(Volume.uuid).where(
                Volume.vm_id == vm.id, Volume.removed.is_(None)))]
        for vol in s.scalars(select(Volume).where(Volume.state.in_(VOLUME_TRANSITIONAL), Volume.removed.is_(None))):
            owner = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
            yield (Volume, vol.id, vol.state), [vol.uuid] + ([owner.uuid] if owner else [])

    def run(self, ctx) -> int:
        now, seen = time.monotonic(), {}
        with self.db.session(readonly=True) as s:
            since = utcnow()
            for key, related in self._candidates(s):
                if not reconcile.busy(s, related, since):
                    seen[key] = self.seen.get(key, now)
        self.seen = seen
        settled = 0
        for (model, row_id, state), first in list(seen.items()):
            if now - first < self.after:
                continue
            with self.db.session() as s:
                row = s.get(model, row_id)
                if row is None or row.state != state or reconcile.busy(s, [row.uuid], utcnow()):
                    continue
                _settle(s, ctx, row, f"it was {state} for {now - first:.0f} s with no job working on it")
                settled += 1
            del self.seen[(model, row_id, state)]
        return settled
