"""Lifecycles as declared tables of (state, event) -> state, applied with compare-and-swap.

Each transition is one conditional UPDATE (... WHERE state = <expected>), so two workers racing on
one object can never both win: the loser sees rowcount 0 and gets a clear error.
"""
from sqlalchemy import update

from volstack.errors import InvalidParameter, ResourceInUse


class Lifecycle:
    def __init__(self, name: str, attr: str, table: dict[str, dict[str, str]]):
        self.name, self.attr, self.table = name, attr, table
        self.observers: list = []        # fn(s, row, before, after) after each transition, in its transaction
        targets = {t for row in table.values() for t in row.values()}
        unknown = targets - set(table)
        assert not unknown, f"{name}: states reached but not declared: {unknown}"

    def canonical(self, state: str) -> str:
        """The declared spelling of a state given in any case (list filters ignore case, as CloudStack's do), so
        the filter compares the column itself and its index serves it; an unknown state is returned as given."""
        return next((st for st in self.table if st.lower() == state.lower()), state)

    def next_state(self, state: str, event: str) -> str:
        nxt = self.table.get(state, {}).get(event)
        if nxt is None:
            allowed = ", ".join(sorted(self.table.get(state, {}))) or "none"
            raise InvalidParameter(f"Cannot {event} a {self.name} that is in state {state} (possible here: {allowed})")
        return nxt

    def fire(self, s, row, event: str, **values) -> str:
        """Move row by event; raise if the table forbids it or someone else moved it first."""
        current = getattr(row, self.attr)
        nxt = self.next_state(current, event)
        model = type(row)
        col = getattr(model, self.attr)
        res = s.execute(update(model).where(model.id == row.id, col == current)
                        .values({self.attr: nxt, **values}).execution_options(synchronize_session=False))
        if res.rowcount != 1:
            raise ResourceInUse(f"The {self.name} {getattr(row, 'name', row.id)} changed state concurrently; retry")
        setattr(row, self.attr, nxt)
        # what a job moved, so that its failure can return each object to a stable state (services/recovery.py)
        s.info.setdefault("moved", {})[(model, row.id)] = self.name
        for k, v in values.items():
            setattr(row, k, v)
        for observer in self.observers:
            observer(s, row, current, nxt)
        return nxt


HOST_RESOURCE = Lifecycle("host", "resource_state", {
    "Enabled": {"Disable": "Disabled", "PrepareMaintenance": "PrepareForMaintenance", "Enable": "Enabled"},
    "Disabled": {"Enable": "Enabled", "PrepareMaintenance": "PrepareForMaintenance", "Disable": "Disabled"},
    "PrepareForMaintenance": {"MaintenanceReached": "Maintenance", "MaintenanceFailed": "ErrorInMaintenance",
                              "CancelMaintenance": "Enabled"},
    "Maintenance": {"CancelMaintenance": "Enabled", "PrepareMaintenance": "Maintenance"},
    "ErrorInMaintenance": {"CancelMaintenance": "Enabled", "PrepareMaintenance": "PrepareForMaintenance"},
})

POOL = Lifecycle("storage pool", "state", {
    "Initialized": {"Attach": "Up"},
    "Up": {"Disable": "Disabled", "Enable": "Up", "PrepareMaintenance": "PrepareForMaintenance"},
    "Disabled": {"Enable": "Up", "Disable": "Disabled", "PrepareMaintenance": "PrepareForMaintenance"},
    "PrepareForMaintenance": {"MaintenanceReached": "Maintenance", "MaintenanceFailed": "ErrorInMaintenance"},
    "ErrorInMaintenance": {"PrepareMaintenance": "PrepareForMaintenance", "CancelMaintenance": "CancelMaintenance"},
    "Maintenance": {"CancelMaintenance": "CancelMaintenance", "Remove": "Removed"},
    "CancelMaintenance": {"MaintenanceCancelled": "Up", "MaintenanceFailed": "ErrorInMaintenance"},
    "Removed": {},
})

# CloudStack's volume state machine (reference §3.1), the part volstack drives.
VOLUME = Lifecycle("volume", "state", {
    "Allocated": {"CreateRequested": "Creating", "DestroyRequested": "Destroy", "UploadRequested": "UploadOp"},
    "Creating": {"OperationSucceeded": "Ready", "OperationFailed": "Allocated", "DestroyRequested": "Destroy"},
    "Ready": {"ResizeRequested": "Resizing", "DestroyRequested": "Destroy", "MigrationRequested": "Migrating",
              "AttachRequested": "Attaching", "SnapshotRequested": "Snapshotting",
              "RevertSnapshotRequested": "RevertSnapshotting"},
    "Resizing": {"OperationSucceeded": "Ready", "OperationFailed": "Ready"},
    "Migrating": {"OperationSucceeded": "Ready", "OperationFailed": "Ready"},
    "Attaching": {"OperationSucceeded": "Ready", "OperationFailed": "Ready"},
    "Snapshotting": {"OperationSucceeded": "Ready", "OperationFailed": "Ready"},
    "RevertSnapshotting": {"OperationSucceeded": "Ready", "OperationFailed": "Ready"},
    "UploadOp": {"OperationSucceeded": "Uploaded", "OperationFailed": "UploadError", "DestroyRequested": "Destroy"},
    "UploadError": {"UploadRequested": "UploadOp", "DestroyRequested": "Destroy"},
    # Browser uploads (getUploadParamsForVolume): the host agent that takes the POST reports the outcome.
    "NotUploaded": {"UploadRequested": "UploadInProgress", "OperationSucceeded": "Uploaded",
                    "OperationFailed": "UploadError", "OperationTimeout": "UploadAbandoned"},
    "UploadInProgress": {"OperationSucceeded": "Uploaded", "OperationFailed": "UploadError",
                         "OperationTimeout": "UploadError"},
    "UploadAbandoned": {"DestroyRequested": "Destroy"},
    # An uploaded volume waits on an image store; its first attach copies it to a primary pool.
    "Uploaded": {"CreateRequested": "Copying", "DestroyRequested": "Destroy"},
    "Copying": {"OperationSucceeded": "Ready", "OperationFailed": "Uploaded"},
    "Destroy": {"ExpungingRequested": "Expunging", "RecoverRequested": "Ready", "RecoverAllocated": "Allocated",
                "RecoverUploaded": "Uploaded"},
    "Expunging": {"OperationSucceeded": "Expunged", "OperationFailed": "Destroy"},
    "Expunged": {},
})

VM = Lifecycle("virtual machine", "state", {
    "Stopped": {"StartRequested": "Starting", "DestroyRequested": "Destroyed", "MigrationRequested": "Stopped"},
    "Starting": {"OperationSucceeded": "Running", "OperationFailed": "Stopped"},
    "Running": {"StopRequested": "Stopping", "RebootRequested": "Running", "MigrationRequested": "Migrating",
                "AgentReportStopped": "Stopped"},
    "Stopping": {"OperationSucceeded": "Stopped", "OperationFailed": "Running"},
    "Migrating": {"OperationSucceeded": "Running", "OperationFailed": "Running", "AgentReportRunning": "Running",
                  "AgentReportStopped": "Stopped"},
    "Destroyed": {"RecoveryRequested": "Stopped", "ExpungeRequested": "Expunging"},
    "Expunging": {"OperationSucceeded": "Expunged", "OperationFailed": "Destroyed"},
    "Expunged": {},
})

# CloudStack's snapshot state machine (reference §3.2). A failed backup goes back to CreatedOnPrimary (the
# older versions' rule): the primary copy is intact and the backup can be retried, rather than an Error
# snapshot hidden from its owner. CreatedOnPrimary and Error snapshots can also be destroyed (volstack addition).
SNAPSHOT = Lifecycle("snapshot", "state", {
    "Allocated": {"CreateRequested": "Creating"},
    "Creating": {"OperationSucceeded": "CreatedOnPrimary", "OperationNotPerformed": "BackedUp",
                 "OperationFailed": "Error"},
    "CreatedOnPrimary": {"BackupToSecondary": "BackingUp", "OperationNotPerformed": "BackedUp",
                         "DestroyRequested": "Destroying"},
    "BackingUp": {"OperationSucceeded": "BackedUp", "OperationFailed": "CreatedOnPrimary"},
    "BackedUp": {"DestroyRequested": "Destroying", "CopyingRequested": "Copying"},
    "Copying": {"OperationSucceeded": "BackedUp", "OperationFailed": "BackedUp"},
    "Destroying": {"OperationSucceeded": "Destroyed", "OperationFailed": "BackedUp",
                   "OperationFailedOnPrimary": "CreatedOnPrimary",      # a snapshot never backed up
                   "OperationFailedOnError": "Error",                   # a failed one stays failed
                   "MergeFailed": "Error"},       # its backup may hold part of its incremental child's data
    "Destroyed": {},
    "Error": {"DestroyRequested": "Destroying"},
})

# CloudStack's VM snapshot state machine (reference §3.5). A failed revert leaves the snapshot Ready (it is
# intact); Expunging may be requested again, so an interrupted delete can be retried.
VM_SNAPSHOT = Lifecycle("VM snapshot", "state", {
    "Allocated": {"CreateRequested": "Creating"},
    "Creating": {"OperationSucceeded": "Ready", "OperationFailed": "Error"},
    "Ready": {"RevertRequested": "Reverting", "ExpungeRequested": "Expunging"},
    "Reverting": {"OperationSucceeded": "Ready", "OperationFailed": "Ready"},
    "Expunging": {"ExpungeRequested": "Expunging", "OperationSucceeded": "Removed", "OperationFailed": "Error",
                  "Hide": "Hidden"},
    "Error": {"ExpungeRequested": "Expunging"},
    "Hidden": {"ExpungeRequested": "Expunging"},
    "Removed": {},
})

# Extract URLs (services/extracts.py). A volume's URL is Creating while its store copy is made and is
# published (Ready) only if the cleanup has not expired it meanwhile; Expired rows whose `removed` is unset
# still have a store copy to delete.
EXTRACT = Lifecycle("extract URL", "state", {
    "Creating": {"Publish": "Ready", "Expire": "Expired"},
    "Ready": {"Expire": "Expired"},
    "Expired": {},
})
