-- Fleet read model: devices, incremental counters, sites, snapshots, rollouts.
-- Runs with search_path set to the projection's (fresh) schema.
CREATE TABLE devices (
    device_id             text PRIMARY KEY,
    site_id               text NOT NULL DEFAULT '',
    kind                  text NOT NULL DEFAULT 'device',
    parent_id             text,
    labels                jsonb NOT NULL DEFAULT '{}',
    metadata              jsonb NOT NULL DEFAULT '{}',
    registered            boolean NOT NULL DEFAULT false,
    retired               boolean NOT NULL DEFAULT false,
    desired_snapshot_id   text,
    desired_config_hash   text,
    desired_revision      integer NOT NULL DEFAULT 0,
    rollout_id            text,
    reported_snapshot_id  text,
    reported_config_hash  text,
    health                text NOT NULL DEFAULT 'unknown',
    online                boolean NOT NULL DEFAULT false,
    last_seen             text,
    agent_version         text NOT NULL DEFAULT '',
    drifted_since         text,
    stuck                 boolean NOT NULL DEFAULT false,
    reconcile_attempts    integer NOT NULL DEFAULT 0,
    added_at              text,
    updated_at            text,
    updated_seq           bigint NOT NULL DEFAULT 0
);

-- Counters per site x reported snapshot, kept by deltas so the summary never scans devices.
CREATE TABLE device_counts (
    site_id     text NOT NULL,
    snapshot_id text NOT NULL,            -- '' = reports nothing yet
    total       bigint NOT NULL DEFAULT 0,
    online      bigint NOT NULL DEFAULT 0,
    offline     bigint NOT NULL DEFAULT 0,
    ok          bigint NOT NULL DEFAULT 0,
    degraded    bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    unknown     bigint NOT NULL DEFAULT 0,
    drifted     bigint NOT NULL DEFAULT 0,
    stuck       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, snapshot_id)
);

CREATE TABLE sites (
    site_id     text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    labels      jsonb NOT NULL DEFAULT '{}',
    metadata    jsonb NOT NULL DEFAULT '{}',
    retired     boolean NOT NULL DEFAULT false,
    added_at    text,
    updated_seq bigint NOT NULL DEFAULT 0
);

CREATE TABLE snapshots (
    snapshot_id        text PRIMARY KEY,
    name               text NOT NULL DEFAULT '',
    version            integer NOT NULL DEFAULT 0,
    parent_id          text,
    description        text NOT NULL DEFAULT '',
    author             text NOT NULL DEFAULT '',
    artifacts          jsonb NOT NULL DEFAULT '{}',
    known_good_targets jsonb NOT NULL DEFAULT '[]',
    retired            boolean NOT NULL DEFAULT false,
    created_at         text,
    updated_seq        bigint NOT NULL DEFAULT 0
);

CREATE TABLE rollouts (
    rollout_id  text PRIMARY KEY,
    snapshot_id text NOT NULL DEFAULT '',
    target      text NOT NULL DEFAULT '',
    status      text NOT NULL DEFAULT 'pending',
    wave        integer NOT NULL DEFAULT 0,
    counts      jsonb NOT NULL DEFAULT '{}',
    last_gate   jsonb,
    started_at  text,
    updated_at  text,
    updated_seq bigint NOT NULL DEFAULT 0
);

-- @after-load: indexes are built once a rebuild's rows are in (much faster than row by row).
CREATE INDEX devices_site ON devices (site_id, device_id);
CREATE INDEX devices_reported ON devices (reported_snapshot_id, device_id);
CREATE INDEX devices_desired ON devices (desired_snapshot_id, device_id);
CREATE INDEX devices_problems ON devices (device_id)
    WHERE NOT retired AND (NOT online OR health <> 'ok' OR drifted_since IS NOT NULL OR stuck);
CREATE INDEX devices_labels ON devices USING gin (labels jsonb_path_ops);
