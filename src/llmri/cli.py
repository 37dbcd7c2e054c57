"""The ``llmri`` command: a click group that registers the commands of :mod:`llmri.commands`.

Errors are one line on stderr with exit status 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys

import click

from .commands import COMMANDS, RESUMABLE
from .errors import LlmriError

_DEBUG = False


def _echo_err(msg: str) -> None:
    click.echo(f"llmri: error: {msg}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """llmri: an MRI scanner for transformer language models."""
    global _DEBUG
    _DEBUG = debug


for _command in COMMANDS:
    cli.add_command(_command)


def _invoked(args) -> click.Command | None:
    """The (sub)command that ``args`` runs, found by name without running anything."""
    cmd, args = cli, list(args)
    while isinstance(cmd, click.Group):
        names = [a for a in args if not a.startswith("-")]
        if not names or names[0] not in cmd.commands:
            return None
        cmd, args = cmd.commands[names[0]], args[args.index(names[0]) + 1:]
    return cmd


def main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="llmri", standalone_mode=False)
    except LlmriError as e:
        if _DEBUG:
            raise
        _echo_err(str(e).splitlines()[0] if str(e) else type(e).__name__)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _echo_err(e.format_message().replace("\n", " "))
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        args = list(sys.argv[1:] if argv is None else argv)
        cmd = _invoked(args)
        flag = RESUMABLE.get(cmd)
        resumes = cmd in RESUMABLE and (flag is None or any(a == flag or a.startswith(flag + "=") for a in args))
        _echo_err("interrupted" + ("; rerun the same command to continue where it stopped" if resumes else ""))
        sys.exit(130)
    except Exception as e:  # an unexpected failure: still one line, unless --debug
        if _DEBUG or os.environ.get("LLMRI_DEBUG"):
            raise
        _echo_err(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  "(rerun with --debug for the traceback)")
        sys.exit(1)
    sys.exit(0)
