-- Control tables shared by every projection (schema public). Idempotent: run at every start.
CREATE TABLE IF NOT EXISTS projection_status (
    name            text PRIMARY KEY,
    version         integer NOT NULL,            -- migrations applied to the live schema
    generation      integer NOT NULL DEFAULT 0,  -- bumped by every swap of a rebuilt schema
    checkpoint      bigint  NOT NULL DEFAULT 0,  -- last log sequence applied (commits with rows)
    applied         bigint  NOT NULL DEFAULT 0,  -- events applied since the schema was built
    skipped_unknown bigint  NOT NULL DEFAULT 0,  -- events of types this build does not know
    rate            double precision NOT NULL DEFAULT 0,  -- events/s over the last batches
    state           text    NOT NULL DEFAULT 'running',   -- running | rebuilding | failed
    error_seq       bigint,
    error           text,
    error_at        timestamptz,
    rebuilt_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Read-model copies at known sequences, so a point-in-time answer replays only a short tail. A
-- full copy holds every row; a delta (base_seq set) only the rows changed after the copy at
-- base_seq (rows are never deleted), so most copies cost what changed, not the whole fleet.
CREATE TABLE IF NOT EXISTS pit_snapshots (
    version    integer NOT NULL,         -- schema version of the fleet projection that wrote it
    seq        bigint NOT NULL,
    at         text NOT NULL,
    devices    integer NOT NULL,
    state      bytea NOT NULL,           -- zlib(msgspec JSON of FleetState)
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, seq)
);
ALTER TABLE pit_snapshots ADD COLUMN IF NOT EXISTS base_seq bigint;  -- NULL: a full copy

-- Events a projection could not apply (undecodable, or refused by its apply function or by
-- PostgreSQL): skipped so the read model goes on, kept here so operators see them and decide.
-- `generation` is the schema generation they belong to (a rebuild records its own, and the swap
-- drops the old schema's).
CREATE TABLE IF NOT EXISTS projection_poison (
    name         text NOT NULL,
    generation   integer NOT NULL,
    seq          bigint NOT NULL,
    type         text NOT NULL,
    aggregate    text NOT NULL,
    aggregate_id text NOT NULL,
    error        text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation, seq)
);
