"""Issuing and revoking NATS identities (DESIGN §11): `fleet device enroll`, `fleet creds create`
and `fleet creds revoke-device`. They need the account keys that `fleet up` keeps under
`<data-dir>/secrets/`, so they run where those are (or with `--data-dir` pointing there)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from fleet.cli.common import JsonOption, console, emit, run, settings
from shared.auth.authority import Authority, push_account, roles_known
from shared.auth.jwt import jwt_of_creds, read_claims
from shared.config import Settings
from shared.errors import NotFound, Unavailable
from shared.times import parse_duration

creds_app = typer.Typer(help="Credentials for operators, services, auditors and the API.", no_args_is_help=True)


def _authority(conf: Settings) -> Authority:
    if not Authority.exists(conf.secrets_path):
        raise NotFound(f"no account keys in {conf.secrets_path.resolve()}: run this where `fleet up` keeps its "
                       "data dir (or pass --data-dir)", field="data_dir")
    return Authority.load_or_create(conf.secrets_path)


def _written(path: Path, text: str, authority: Authority) -> dict[str, Any]:
    authority.write_creds(path, text)
    claims = read_claims(jwt_of_creds(text))
    return {"out": str(path), "name": claims.name, "public_key": claims.sub, "expires": claims.exp}


def _render(result: dict[str, Any]) -> None:
    console.print(f"wrote {result['out']} for {result['name']} ({result['public_key']}); keep it secret (0600)")


def enroll(
    ctx: typer.Context,
    device: str = typer.Argument(..., help="The device id: its identity's name."),
    out: Path = typer.Option(..., "--out", help="Where to write the credentials file (mode 0600)."),
    expires: str | None = typer.Option(
        None, "--expires", help="Lifetime of the credentials (e.g. 30d as 720h); default: until revoked."),
    json_out: bool = JsonOption,
) -> None:
    """Write a NATS credentials file for one device (no server change: a scoped signing key)."""
    async def main() -> dict[str, Any]:
        authority = _authority(settings(ctx))
        lifetime = parse_duration(expires, field="expires") if expires else None
        return _written(out, authority.issue_device(device, expires_in=lifetime), authority)

    emit(run(main(), json_out=json_out), json_out=json_out, render=_render)


@creds_app.command("create")
def create(
    ctx: typer.Context,
    role: str = typer.Option(..., "--role", help=f"One of: {', '.join(roles_known())}."),
    name: str = typer.Option(..., "--name", help="The identity's name (recorded as the actor)."),
    out: Path = typer.Option(..., "--out", help="Where to write the credentials file (mode 0600)."),
    json_out: bool = JsonOption,
) -> None:
    """Write a NATS credentials file for an operator, a service, an auditor, the API or admin."""
    async def main() -> dict[str, Any]:
        authority = _authority(settings(ctx))
        return _written(out, authority.issue(role, name), authority)

    emit(run(main(), json_out=json_out), json_out=json_out, render=_render)


@creds_app.command("revoke-device")
def revoke_device(
    ctx: typer.Context,
    device: str = typer.Argument(..., help="The device whose credentials stop working now."),
    json_out: bool = JsonOption,
) -> None:
    """Revoke every credential issued to a device so far (retiring it does this by itself);
    re-enrolling it afterwards issues working credentials again (rotation)."""
    async def main() -> dict[str, Any]:
        conf = settings(ctx)
        try:  # through the authority part, the one writer of revocations
            return await _command(conf, device)
        except Unavailable:  # none runs (no `fleet up`, no deployed part): do it here, as it would
            authority = _authority(conf)
            await _push(conf, authority.revoke_device(device))
            return {"device_id": device, "revoked": True}

    emit(run(main(), json_out=json_out), json_out=json_out,
         render=lambda r: console.print(f"revoked the credentials of {r['device_id']}"))


async def _command(conf: Settings, device: str) -> dict[str, Any]:
    from fleet.cli.common import command_settings
    from shared.auth.revoker import SERVICE
    from shared.commands import CommandClient
    from shared.connection import connect_nats

    nc = await connect_nats(command_settings(conf), "cli", connect_for=5.0)
    try:
        reply = await CommandClient(nc, timeout=5.0).send(SERVICE, "revoke_device", {"device_id": device})
        result: dict[str, Any] = reply.result
        return result
    finally:
        await nc.close()


async def _push(conf: Settings, account_jwt: str) -> None:
    import msgspec

    from shared.connection import connect_nats

    nc = await connect_nats(msgspec.structs.replace(
        conf, nats_creds=str(conf.secrets_path / "system.creds")), "cli-revoke", connect_for=5.0)
    try:
        await push_account(nc, account_jwt)
    finally:
        await nc.close()


@creds_app.command("prune-revocations")
def prune_revocations(
    ctx: typer.Context,
    older_than: str = typer.Option(..., "--older-than",
                                   help="The longest lifetime of any device credentials (e.g. 720h)."),
    json_out: bool = JsonOption,
) -> None:
    """Drop revocations older than the longest credential lifetime: every JWT they refused has
    expired by itself. Only safe when every device was enrolled with `--expires` no longer than
    that (a device enrolled without an expiry would get its revoked identity back)."""
    async def main() -> dict[str, Any]:
        conf = settings(ctx)
        authority = _authority(conf)
        dropped = authority.prune_revocations(parse_duration(older_than, field="older_than"))
        if dropped:
            await _push(conf, authority.account_jwt("FLEET"))
        return {"dropped": dropped, "kept": len(authority.state.revocations)}

    emit(run(main(), json_out=json_out), json_out=json_out,
         render=lambda r: console.print(f"dropped {r['dropped']} revocations, kept {r['kept']}"))


@creds_app.command("rotate-signing-key")
def rotate_signing_key(
    ctx: typer.Context,
    finish: bool = typer.Option(False, "--finish", help="Stop trusting the previous key (step 3)."),
    json_out: bool = JsonOption,
) -> None:
    """Rotate the operator signing key the authority part holds (docs/operations.md): 1. this
    command makes a new one while the old stays trusted; 2. give the servers the new
    `fleet creds server-config` and the authority part its new `operator-signing.nk` and
    `public-keys.json`; 3. `--finish`, and the servers' config once more."""
    async def main() -> dict[str, Any]:
        return {"signing_key": _authority(settings(ctx)).rotate_signing_key(finish=finish), "finished": finish}

    emit(run(main(), json_out=json_out), json_out=json_out,
         render=lambda r: console.print(f"operator signing key {r['signing_key']}"
                                        + (" (the previous one is no longer trusted)" if finish else
                                           " (the previous one stays trusted until --finish)")))


@creds_app.command("server-config")
def server_config(
    ctx: typer.Context,
    resolver_dir: Path = typer.Option(Path("jwt"), "--resolver-dir",
                                      help="Where the server keeps pushed account JWTs."),
) -> None:
    """Print the nats-server configuration that trusts this deployment's operator (operator JWT,
    system account, a full resolver preloaded with the accounts), making the keys in
    `<data-dir>/secrets/` on first use. Include it in an external server's config; `fleet up`
    with FLEET_NATS_URL then issues every part its own identity as with the embedded server.
    It holds no secret (JWTs are public)."""
    conf = settings(ctx)
    authority = Authority.load_or_create(conf.secrets_path)
    sys.stdout.write(authority.server_config(resolver_dir))
