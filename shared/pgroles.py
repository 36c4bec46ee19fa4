"""PostgreSQL least privilege (DESIGN §11): two login roles instead of the superuser.

- `fleet_owner` owns the database, hence its `public` schema and every read-model schema the
  projection runner (and `fleet projections rebuild`) creates; it is not a superuser.
- `fleet_reader`, for the query API, may only read: SELECT on every table `fleet_owner` has made
  or will make (default privileges, so schemas swapped in by a rebuild are readable too). It may
  not take advisory locks (EXECUTE on the `pg_*advisory*lock*` functions is the owner's alone in
  this database; the unlock functions stay public, asyncpg's pool runs `pg_advisory_unlock_all()`
  when a connection goes back): it held the runner's start-up lock and hung a restarted
  projections part.

`ensure_roles` runs once per start of `fleet up`, as the superuser, and is the only thing that
uses the superuser's password. The roles' passwords are random and live in a pgpass file under
`<data-dir>/secrets/` (0600), handed to the parts as `PGPASSFILE`; URLs never carry them.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

OWNER = "fleet_owner"
READER = "fleet_reader"

# For an external PostgreSQL docs/security.md ("PostgreSQL: least privilege") shows the same statements as SQL.
GRANTS = f"""
GRANT CONNECT ON DATABASE "{{db}}" TO {READER};
GRANT USAGE ON SCHEMA public TO {READER};
ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} GRANT USAGE ON SCHEMAS TO {READER};
ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} GRANT SELECT ON TABLES TO {READER};
DO $$ DECLARE f regprocedure; BEGIN
  FOR f IN SELECT oid::regprocedure FROM pg_proc
           WHERE proname LIKE 'pg\\_%advisory\\_%' AND proname NOT LIKE '%unlock%' LOOP
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO {OWNER}', f);
  END LOOP;
END $$;
"""


def _passwords(passfile: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    if passfile.exists():
        for line in passfile.read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 5:
                found[fields[3]] = fields[4]
    return found


async def ensure_roles(superuser_dsn: str, database: str, passfile: Path) -> tuple[str, str]:
    """Create (or fix) the owner and reader roles and their grants on `database`, write their
    passwords to `passfile` (0600), and return the owner's and the reader's URLs (no password)."""
    import asyncpg

    from shared.secretfiles import write_private

    url = urlparse(superuser_dsn)
    host, port = url.hostname or "127.0.0.1", url.port or 5432
    known = _passwords(passfile)
    passwords = {role: known.get(role) or secrets.token_hex(24) for role in (OWNER, READER)}
    write_private(passfile, "".join(f"{host}:{port}:*:{role}:{pw}\n" for role, pw in passwords.items()))
    conn = await asyncpg.connect(superuser_dsn)
    try:
        for role, password in passwords.items():
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            verb = "ALTER" if exists else "CREATE"
            # DDL takes no parameters; the password is hex, so quoting it is safe.
            await conn.execute(f"{verb} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                               f"PASSWORD '{password}'")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await conn.execute(f'CREATE DATABASE "{database}" OWNER {OWNER}')
        else:
            await conn.execute(f'ALTER DATABASE "{database}" OWNER TO {OWNER}')
        await conn.execute(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
    finally:
        await conn.close()
    conn = await asyncpg.connect(superuser_dsn.rsplit("/", 1)[0] + f"/{database}")
    try:
        await _adopt(conn)
        await conn.execute(GRANTS.format(db=database))
        for schema in await _schemas(conn):
            await conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {READER}; '
                               f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO {READER}')
    finally:
        await conn.close()
    base = f"postgresql://{{}}@{host}:{port}/{database}"
    return base.format(OWNER), base.format(READER)


async def _schemas(conn: Any) -> list[str]:
    rows = await conn.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname = 'public' OR nspname LIKE 'rm\\_%'")
    return [r["nspname"] for r in rows]


async def _adopt(conn: Any) -> None:
    """Hand read models made by the superuser (data dirs from before these roles) to the owner."""
    for schema in await _schemas(conn):
        if schema != "public":
            await conn.execute(f'ALTER SCHEMA "{schema}" OWNER TO {OWNER}')
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm') "
            "AND pg_get_userbyid(c.relowner) <> $2", schema, OWNER)
        for row in rows:
            await conn.execute(f'ALTER TABLE "{schema}"."{row["relname"]}" OWNER TO {OWNER}')
