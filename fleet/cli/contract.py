"""`fleet contract export DIR`: write the machine-readable contract (JSON Schemas and the AsyncAPI
document, shared.contract.schema) into DIR; docs/contract/ holds the committed copy."""

from __future__ import annotations

from pathlib import Path

import typer

from shared.contract import publish

GENERATED = ("commands", "replies", "events")
app = typer.Typer(help="The published wire contract (docs/contract.md).", no_args_is_help=True)


@app.command("export")
def export(directory: Path = typer.Argument(..., help="Where to write the files (e.g. docs/contract)."),
           check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 if DIR differs.")) -> None:
    """Write a JSON Schema per command, reply and event type, the device schemas, asyncapi.json and
    reference.md; schemas of commands or events that no longer exist are removed."""
    files = {directory / path: data for path, data in publish.files().items()}
    # Only the generated folders are swept: other files there (the config-hash test vectors) stay.
    stale = sorted(p for folder in GENERATED for p in (directory / folder).glob("*.json") if p not in files)
    differ = sorted(p for p, data in files.items() if not p.exists() or p.read_bytes() != data)
    if check:
        for path in differ:
            typer.echo(f"differs: {path}")
        for path in stale:
            typer.echo(f"stale: {path}")
        raise typer.Exit(1 if differ or stale else 0)
    for path in stale:
        path.unlink()
    for path in differ:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[path])
    typer.echo(f"{len(files)} files in {directory} ({len(differ)} written, {len(stale)} removed)")
