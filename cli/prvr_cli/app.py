"""The `prvr` command: the root Typer app, one module per sub-command, and the exit-code contract.

Kept thin and cheap to import: nothing here imports torch or prvr_export; commands import what they
need inside their own function, so `prvr --help` starts in a fraction of a second on any machine.
"""

from __future__ import annotations

import sys

import typer

import prvr_sdk
from prvr_cli import data, doctor, encode, evaluate, export, import_cmd, index, keys, plugins, search, train
from prvr_cli.build_engine import build_engine
from prvr_cli.calibrate import calibrate
from prvr_cli.common import print_error
from prvr_cli.serve import serve
from prvr_sdk.errors import EXIT_CODES, PrvrError, exit_code_for

# What each exit code means to a caller; the classes behind each code are read from EXIT_CODES.
EXIT_CODE_MEANINGS: dict[int, str] = {
    0: "success",
    1: "error",
    2: "invalid input or usage",
    3: "backend not installed",
    4: "parity or accuracy check failed (export parity, calibration gate)",
    5: "bundle or index invalid, checksum mismatch",
    6: "index does not match the bundle",
    7: "index busy (another writer holds its lock, or it changed on disk)",
}


def _exit_code_help() -> str:
    """One line per exit code, naming the error classes that produce it."""
    lines = []
    for code, meaning in sorted(EXIT_CODE_MEANINGS.items()):
        classes = sorted(cls.__name__ for cls, c in EXIT_CODES.items() if c == code)
        lines.append(f"  {code}  {meaning}" + (f" ({', '.join(classes)})" if classes else ""))
    return "\n".join(lines)


HELP = f"""Partially relevant video retrieval: find the videos, and the moment in them, that match a sentence.

Data goes to stdout (--json where offered); logs and warnings go to stderr.

Exit codes:

{_exit_code_help()}
"""

def _show_flags_plainly() -> None:
    """Typer's rich help prints a type after every option, flags included (``--overwrite <bool>``), which
    reads as if the flag took a value; print boolean flags bare, as Click's plain help does."""
    from typer.core import TyperOption

    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_prvr_plain_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else original(self, ctx)

    display_type_rich._prvr_plain_flags = True
    TyperOption.display_type_rich = display_type_rich


_show_flags_plainly()

app = typer.Typer(
    name="prvr",
    help=HELP,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals can hold large arrays
)
app.command(name="doctor")(doctor.doctor)
app.command(name="train")(train.train)
app.command(name="eval")(evaluate.evaluate)
app.command(name="export")(export.export)
app.command(name="import")(import_cmd.import_official)
app.command(name="encode")(encode.encode)
app.add_typer(index.app, name="index")
app.command(name="search")(search.search)
app.command(name="serve")(serve)
app.command(name="build-engine")(build_engine)
app.command(name="calibrate")(calibrate)
app.add_typer(data.app, name="data")
app.add_typer(keys.app, name="keys")
app.add_typer(plugins.app, name="plugins")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"prvr-sdk {prvr_sdk.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
    ),
) -> None:
    """Root options; the sub-commands do the work."""


def _app_for(args: list[str]) -> typer.Typer:
    """The app to run for ``args``: the whole one, or -- when the first argument names a plain command --
    one holding that command alone, with the same root options.

    Typer builds every command's parameters on every call (about 0.06 s for the twenty commands here), which
    a one-shot ``prvr search`` would pay for nothing. Help, versions, groups (``index``, ``data``, ...) and
    unknown names get the whole app, so usage, help and errors read exactly as before.
    """
    name = args[0] if args else ""
    chosen = [info for info in app.registered_commands if info.name == name]
    if len(chosen) != 1:
        return app
    single = typer.Typer(name="prvr", help=HELP, no_args_is_help=True, rich_markup_mode="rich",
                         pretty_exceptions_show_locals=False)
    single.registered_commands.append(chosen[0])
    single.callback()(root)
    return single


def main() -> None:
    """Console-script entry point: run the app and turn a PrvrError into its documented exit code."""
    try:
        _app_for(sys.argv[1:])()
    except PrvrError as exc:  # outside Typer's context, so not ``fail`` (its typer.Exit would go unhandled)
        print_error(exc)
        raise SystemExit(exit_code_for(exc)) from None
