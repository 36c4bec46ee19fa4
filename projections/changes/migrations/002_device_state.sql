-- Fleet diff between two moments (issue 12): each change about a device carries the device as it
-- stood after it (reported snapshot, online, health, drifted, present), so the state of every
-- device that changed in a window is read at both ends from its own changes, at a cost that follows
-- the window, not the fleet. `device_sites` becomes each device's current state.
ALTER TABLE changes ADD COLUMN dev_snapshot text;
ALTER TABLE changes ADD COLUMN dev_online boolean;
ALTER TABLE changes ADD COLUMN dev_health text;
ALTER TABLE changes ADD COLUMN dev_drifted boolean;
ALTER TABLE changes ADD COLUMN dev_present boolean;
ALTER TABLE device_sites ADD COLUMN snapshot_id text;
ALTER TABLE device_sites ADD COLUMN online boolean NOT NULL DEFAULT false;
ALTER TABLE device_sites ADD COLUMN health text NOT NULL DEFAULT 'unknown';
ALTER TABLE device_sites ADD COLUMN drifted boolean NOT NULL DEFAULT false;
ALTER TABLE device_sites ADD COLUMN present boolean NOT NULL DEFAULT false;
