"""The `fmrl-sdk` command line. Each pipeline stage registers its own commands (see `register` functions);
imports of heavy modules happen inside the commands so that `fmrl-sdk --help` stays fast."""

from __future__ import annotations

import sys

import typer

from .errors import FmrlError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="fMRLRec: train one nested recommender, export the size each device can afford, stream it.",
)


def _register_all() -> None:
    from .train import commands as train_commands

    train_commands.register(app)
    for module in ("fmrl_sdk.features.commands", "fmrl_sdk.deploy.commands", "fmrl_sdk.simulate.commands"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.register(app)


_register_all()


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except FmrlError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
