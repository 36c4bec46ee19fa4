"""docs/cli.md, generated from the typer app: every command, its arguments and options, and the
exit codes read from the error classes (`shared.errors`). `python -m fleet.cli.reference
docs/cli.md` writes it; `--check` says whether the committed file is current (a unit test runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
import typer.cli
import typer.main
from typer.core import MARKUP_MODE_KEY

from shared import errors

PREFACE = """\
# The `fleet` CLI

Generated from the CLI itself by `python -m fleet.cli.reference docs/cli.md` (a test keeps this
file equal to what it generates): do not edit by hand.

**Output.** Every command that prints an answer takes `-o json|yaml|wide` (`--output`): `json` and
`yaml` are machine-readable (a refusal too, as `{"ok": false, "error": {...}}`), `wide` prints
tables at full width with nothing cut; `--json` is the alias of `-o json`.

**Global options** (`fleet [OPTIONS] COMMAND`): `--data-dir`, `--nats-url`, `--database-url`,
`--api-url`, `--context` (see [configuration](configuration.md)), `--version`.

**Shell completion.** `fleet --install-completion` installs it for the current shell (bash, zsh,
fish, PowerShell; restart the shell after); `fleet --show-completion` prints the script instead,
to install it by hand.

**Exit codes.**

| exit | meaning |
|---|---|
| 0 | done |
{errors}| 7 | `fleet rollout watch` only: paused or held for `promote` (1: the rollout failed) |
| 130 | interrupted (Ctrl-C) |

"""


def _exit_rows() -> str:
    rows: dict[int, list[str]] = {}
    classes: list[type[errors.FleetError]] = [errors.FleetError, *errors.ERRORS_BY_CODE.values()]
    for cls in classes:
        names = rows.setdefault(cls.exit_code, [])
        if cls.code not in names:
            names.append(cls.code)
    return "".join(f"| {code} | {', '.join(f'`{n}`' for n in names)}"
                   f"{' (or an unexpected error)' if code == 1 else ''} |\n" for code, names in sorted(rows.items()))


def render() -> str:
    """The whole of docs/cli.md."""
    from fleet.cli import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, obj={MARKUP_MODE_KEY: app.rich_markup_mode})
    body = typer.cli.get_docs_for_click(obj=command, ctx=ctx, name="fleet", title="Commands")
    return PREFACE.replace("{errors}", _exit_rows()) + body.strip() + "\n"


def main(argv: list[str]) -> int:
    """`reference.py PATH [--check]`."""
    path = Path(argv[0])
    text = render()
    if "--check" in argv[1:]:
        if not path.exists() or path.read_text() != text:
            sys.stderr.write(f"{path} is not current: run python -m fleet.cli.reference {path}\n")
            return 1
        return 0
    path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
