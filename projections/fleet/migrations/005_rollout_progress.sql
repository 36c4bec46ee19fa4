-- Rollout progress per wave (issue 14): each device's standing in its latest rollout (wave,
-- deadline, the hash that rollout gave it, in_flight/converged/failed/restored), and counters per
-- rollout x wave kept by deltas as device rows change. The bump rebuilds existing read models so
-- past rollouts get their progress too.
ALTER TABLE devices ADD COLUMN rollout_wave integer NOT NULL DEFAULT -1;
ALTER TABLE devices ADD COLUMN rollout_deadline text;
ALTER TABLE devices ADD COLUMN rollout_hash text;
ALTER TABLE devices ADD COLUMN rollout_status text NOT NULL DEFAULT '';
ALTER TABLE rollouts ADD COLUMN wave_sizes jsonb NOT NULL DEFAULT '[]';
ALTER TABLE rollouts ADD COLUMN apply_timeout_seconds double precision NOT NULL DEFAULT 300;

CREATE TABLE rollout_progress (
    rollout_id text NOT NULL,
    wave       integer NOT NULL,
    assigned   bigint NOT NULL DEFAULT 0,
    in_flight  bigint NOT NULL DEFAULT 0,
    converged  bigint NOT NULL DEFAULT 0,
    failed     bigint NOT NULL DEFAULT 0,
    timed_out  bigint NOT NULL DEFAULT 0,  -- left the rollout while still in flight
    restored   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout_id, wave)
);

-- @after-load: indexes are built once a rebuild's rows are in (much faster than row by row).
-- Devices in flight past their deadline count as timed out when asked: this finds them per rollout.
CREATE INDEX devices_rollout_in_flight ON devices (rollout_id, rollout_deadline)
    WHERE rollout_status = 'in_flight';
