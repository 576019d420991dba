"""`python -m fmrl_sdk.features ...`: the featurization commands on their own (same as `fmrl-sdk ...`)."""

import sys

import typer

from ..errors import FmrlError
from .commands import register

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
register(app)


def main() -> None:
    try:
        app(standalone_mode=False)
    except FmrlError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
