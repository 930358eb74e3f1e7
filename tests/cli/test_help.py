"""Every command's --help: boolean flags print bare (no value placeholder), and every command has help.

Oracle: the command tree Typer builds -- each option that Click treats as a flag must be shown without the
``<bool>`` type placeholder that Typer's rich help adds, since that reads as if the flag took a value.
"""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from prvr_cli.app import app

runner = CliRunner()


def walk(command, path: tuple[str, ...] = ()):
    """(path, command) for the root and every sub-command (Typer vendors its own Click: duck typing)."""
    yield path, command
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from walk(sub, (*path, name))


def test_flags_show_bare_in_every_help():
    root = typer.main.get_command(app)
    checked = 0
    for path, command in walk(root):
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        flags = [o for o in command.params if getattr(o, "is_flag", False) and o.opts]
        for flag in flags:
            lines = [line for line in result.output.splitlines() if f" {flag.opts[0]} " in f"{line} "]
            assert lines, (path, flag.opts)
            assert all("<bool>" not in line for line in lines), (path, lines)
            checked += 1
    assert checked > 15  # --json, --overwrite, --upsert ... across the commands
