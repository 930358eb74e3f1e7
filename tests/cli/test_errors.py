"""Every CLI error goes through ``prvr_cli.common.fail`` / ``print_error``: ``error: <message>`` on stderr,
the message printed verbatim (rich markup escaped: paths may hold ``[brackets]``), the documented exit code.
Also what ``prvr eval`` and ``prvr export`` say when there is no run to default to
(``resolve_checkpoint``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from prvr_cli import app as app_module
from prvr_cli.app import app
from prvr_sdk.errors import InvalidInputError

runner = CliRunner()


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return "".join(text.split())


def test_export_without_a_run_says_how_to_make_one(tmp_path: Path) -> None:
    runs = tmp_path / "runs[bold]x[/bold]"
    result = runner.invoke(app, ["export", "--model", "amdnet", "--runs-dir", str(runs)])
    assert result.exit_code == 2, result.output
    out = flat(result.output)
    assert flat(f"error: no trained amdnet run under {runs}/") in out  # markup-like text kept verbatim
    assert flat("`prvr train --model amdnet") in out and "--checkpointPATH" in out


def test_eval_without_a_run_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval"])
    assert result.exit_code == 2, result.output
    expected = "error: no best.pt under runs/ (train a model with `prvr train` first)"
    assert flat(expected) in flat(result.output)


def test_eval_error_keeps_brackets(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    missing = tmp_path / "[red]none[/red].pt"
    result = runner.invoke(app, ["eval", "--checkpoint", str(missing)])
    assert result.exit_code == 2, result.output
    assert flat(f"{missing}: checkpoint not found") in flat(result.output)


def test_main_prints_escaped_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    failing = typer.Typer()

    @failing.command()
    def boom() -> None:
        raise InvalidInputError("--out [bold]x[/bold]: cannot write")

    monkeypatch.setattr(app_module, "app", failing)
    monkeypatch.setattr(sys, "argv", ["prvr"])
    with pytest.raises(SystemExit) as info:
        app_module.main()
    assert info.value.code == 2
    assert "error: --out [bold]x[/bold]: cannot write" in capsys.readouterr().err
