-- Changes read model: one row per state-change event, filterable by time, device, site,
-- snapshot, rollout and actor. Runs with search_path set to the projection's (fresh) schema.
CREATE TABLE changes (
    seq          bigint PRIMARY KEY,
    at           timestamptz NOT NULL,
    type         text NOT NULL,
    aggregate    text NOT NULL,
    aggregate_id text NOT NULL,
    actor        text NOT NULL,
    event_id     text NOT NULL,
    summary      text NOT NULL,
    device_id    text,
    site_id      text,
    snapshot_id  text,
    rollout_id   text
);

-- Where each device is, so events that do not name a site still land under the right one.
CREATE TABLE device_sites (
    device_id text PRIMARY KEY,
    site_id   text NOT NULL
);

-- @after-load: indexes are built once a rebuild's rows are in (much faster than row by row).
CREATE INDEX changes_at ON changes (at, seq);
CREATE INDEX changes_device ON changes (device_id, seq) WHERE device_id IS NOT NULL;
CREATE INDEX changes_site ON changes (site_id, seq) WHERE site_id IS NOT NULL;
CREATE INDEX changes_snapshot ON changes (snapshot_id, seq) WHERE snapshot_id IS NOT NULL;
CREATE INDEX changes_rollout ON changes (rollout_id, seq) WHERE rollout_id IS NOT NULL;
CREATE INDEX changes_actor ON changes (actor, seq);
