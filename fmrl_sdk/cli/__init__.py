"""The `fmrl-sdk` command line (also `python -m fmrl_sdk.cli`). Each pipeline stage registers its own commands
(see `register` functions); quickstart.py chains them. Imports of heavy modules happen inside the commands
so that `fmrl-sdk --help` stays fast."""

from __future__ import annotations

import sys

import typer

from ..errors import FmrlError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="fMRLRec: train one nested recommender, export the size each device can afford, stream it.",
)


def _register_all() -> None:
    from ..data import commands as data_commands
    from ..deploy import commands as deploy_commands
    from ..features import commands as features_commands
    from ..simulate import commands as simulate_commands
    from ..train import commands as train_commands
    from ..train import vectors as vectors_commands
    from . import quickstart

    for module in (data_commands, features_commands, vectors_commands, train_commands, deploy_commands,
                   simulate_commands, quickstart):
        module.register(app)


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", "-v",
                                          help="Show known-harmless library warnings (hidden by default).")):
    from .noise import hide_known_noise

    hide_known_noise(not verbose)


_register_all()


@app.command("cpp-dir")
def cpp_dir_cmd():
    """Print the folder of the C/C++ runtime's CMake project (shipped inside the package)."""
    from ..runtime.cpp import cpp_dir

    typer.echo(str(cpp_dir()))


def _verbose_requested(args: list[str]) -> bool:
    """--verbose / -v among the global options (before the command name)."""
    for arg in args:
        if not arg.startswith("-"):
            return False
        if arg in ("--verbose", "-v"):
            return True
    return False


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2; Ctrl-C exits 130. An
    OSError (or a safetensors write error) that escapes a command is one line too (`error: FILE: REASON`,
    exit 2): a full disk or a missing permission is the machine's state, not a bug to show a traceback for."""
    from .noise import filter_stderr

    if not _verbose_requested(sys.argv[1:]):
        filter_stderr()
    try:
        app(standalone_mode=False)
    except FmrlError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # typer turns Ctrl-C into Abort
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.exceptions.TyperException as e:  # usage errors (typer's own click) carry their exit code
        print(f"error: {e.format_message()} (see --help)", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:
        print(f"error: {_os_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        from ..fileio import write_error_reason

        print(f"error: {write_error_reason(e) or e}", file=sys.stderr)
        sys.exit(2)


def _os_error_line(e: OSError) -> str:
    """`FILENAME: strerror` (both file names for a failed rename) of an OSError that escaped a command."""
    reason = e.strerror or (str(e) if str(e) else type(e).__name__)
    if e.filename is None:
        return reason
    if getattr(e, "filename2", None) is not None:
        return f"{e.filename} -> {e.filename2}: {reason}"
    return f"{e.filename}: {reason}"
