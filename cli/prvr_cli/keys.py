"""`prvr keys`: Ed25519 key pairs for signing bundles (`prvr export --sign-key`).

The private key signs at export time and stays with whoever releases bundles; the public key (`NAME.pub`)
goes to every machine that loads bundles and is passed as a trusted key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from prvr_cli.common import fail
from prvr_sdk.errors import PrvrError

app = typer.Typer(help="Signing keys for bundles (Ed25519).", no_args_is_help=True)


@app.command("generate")
def generate(
    name: Annotated[
        Path, typer.Argument(help="Private key file to create; the public key goes to NAME.pub.")
    ],
    public: Annotated[
        Path | None, typer.Option("--public", help="Public key file \\[default: NAME.pub].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print paths and fingerprint as JSON.")] = False,
) -> None:
    """Create a key pair: NAME (private, mode 0600) and NAME.pub. Existing files are never overwritten."""
    from prvr_sdk.signing import generate_key

    public = public or name.with_name(name.name + ".pub")
    try:
        info = generate_key(name, public)
    except PrvrError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        typer.echo(f"private key {info['private_key']} (keep it secret)")
        typer.echo(f"public key  {info['public_key']} (fingerprint {info['fingerprint']})")
