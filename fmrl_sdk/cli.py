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
    from .deploy import commands as deploy_commands
    from .features import commands as features_commands
    from .simulate import commands as simulate_commands
    from .train import commands as train_commands
    from . import quickstart

    for module in (features_commands, train_commands, deploy_commands, simulate_commands, quickstart):
        module.register(app)


_register_all()


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2; Ctrl-C exits 130."""
    import click

    try:
        app(standalone_mode=False)
    except FmrlError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as e:  # usage errors carry their own exit code
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
