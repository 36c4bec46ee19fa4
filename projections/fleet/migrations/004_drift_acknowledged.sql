-- Operators can acknowledge a device's drift (DriftAcknowledged): the device row says so, and a
-- forced reconciliation now clears `stuck` (ReconcileForced was not projected before). The bump
-- makes existing fleet read models rebuild themselves so past acknowledgements appear too.
ALTER TABLE devices ADD COLUMN acknowledged boolean NOT NULL DEFAULT false;
