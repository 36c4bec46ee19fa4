-- Rollout events are projected from this version on (status, wave, counts, last gate): the bump
-- makes existing fleet read models rebuild themselves so past rollouts appear too.
-- @after-load: indexes are built once a rebuild's rows are in (much faster than row by row).
CREATE INDEX rollouts_status ON rollouts (status, rollout_id);
