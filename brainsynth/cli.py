"""The ``brainsynth`` script: one argument parser whose sub-commands each side registers (this machine's in
:mod:`brainsynth.local_commands`, the service's in :mod:`brainsynth.service_commands`), a usage text made
from it, and one mapping of errors to exit codes. Building the parser loads neither torch nor httpx: a
command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence

from brainsynth import local_commands, service_commands
from brainsynth.arguments import Parser, UsageError, cli_message
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


def exit_code(err: BaseException) -> int:
    """The exit code for an error that ended a command."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, (UsageError, ConditioningError, SamplingError, OutputExistsError, RegistrationError)):
        return EXIT_USAGE
    return EXIT_FAILURE


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
        return parsed.run(parsed)
    except KeyboardInterrupt as err:
        print("brainsynth: interrupted", file=sys.stderr)
        return exit_code(err)
    except (BrainSynthError, UsageError, OSError) as err:
        print(f"brainsynth: error: {cli_message(err)}", file=sys.stderr)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
