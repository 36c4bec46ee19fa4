"""docs/cli.md is what `python -m fleet.cli.reference` generates from the typer app today (issue 25
item 5): a new command, option or exit code shows up there or this test fails."""

from __future__ import annotations

from pathlib import Path

from fleet.cli import reference
from shared import errors

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_cli_reference_is_current() -> None:
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == reference.render(), "run: python -m fleet.cli.reference docs/cli.md"


def test_the_reference_lists_every_command_and_exit_code() -> None:
    text = reference.render()
    for command in ("`fleet rollout status`", "`fleet degraded`", "`fleet context add`", "`fleet token create`"):
        assert f"## {command}" in text, command
    for cls in errors.ERRORS_BY_CODE.values():
        assert f"| {cls.exit_code} | " in text and f"`{cls.code}`" in text, cls
    assert "--install-completion" in text and "-o json|yaml|wide" in text


def test_check_refuses_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("# old\n")
    assert reference.main([str(stale), "--check"]) == 1
    assert reference.main([str(stale)]) == 0
    assert reference.main([str(stale), "--check"]) == 0
