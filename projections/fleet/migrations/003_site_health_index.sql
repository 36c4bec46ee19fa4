-- A page of one site's devices in one health (`GET /v1/devices?site=S&health=H`, the degraded
-- views) walked in id order straight off an index: without it the planner filters a site's (or
-- every problem device's) rows one by one, about 4,000 rows per page of 50 at 100,000 devices.
-- @after-load: indexes are built once a rebuild's rows are in (much faster than row by row).
CREATE INDEX devices_site_health ON devices (site_id, health, device_id);
