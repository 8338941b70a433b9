"""The ``omeloc`` command line: thin commands, each parsing arguments and calling one library
function.

One module per command (``omeloc/cli/predict.py`` for ``omeloc predict``, ...), each with
``HELP``, ``EXAMPLES``, ``add_arguments(parser)`` and ``run(args) -> int``; this module only
assembles the parser and turns errors into exit codes.

Exit codes: 0 success; 2 bad input or usage (an :class:`~omeloc.errors.OmelocError`, printed as
one line, no traceback); 1 an unexpected failure (traceback with ``-v``); 130 interrupted.
``-v``/``-q`` work before or after the command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from omeloc import __version__
from omeloc.cli import (
    demo,
    evaluate,
    export,
    import_tiff,
    info,
    predict,
    rechunk,
    recover,
    relate,
    remove,
    show,
    synth,
    train,
)
from omeloc.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    examples,
    known_failure,
)
from omeloc.errors import OmelocError

__all__ = [
    "COMMANDS",
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "build_parser",
    "main",
]

logger = logging.getLogger("omeloc")

#: command name → its module, in the order ``--help`` lists them
COMMANDS: dict[str, ModuleType] = {
    "demo": demo,
    "info": info,
    "synth": synth,
    "import-tiff": import_tiff,
    "rechunk": rechunk,
    "recover": recover,
    "evaluate": evaluate,
    "predict": predict,
    "train": train,
    "relate": relate,
}
COMMANDS["remove"] = remove
COMMANDS.update({"export": export, "show": show})  # models in and out (omeloc.modelio)


def _verbosity(*, keep_earlier: bool) -> argparse.ArgumentParser:
    """A parent parser with ``-v``/``-q``.

    The top-level parser has the real defaults; a command's parser has ``keep_earlier`` (no
    defaults, ``argparse.SUPPRESS``), so ``omeloc -v predict`` keeps the ``-v`` given before the
    command instead of resetting it to the command's default.
    """
    verbose, quiet = (argparse.SUPPRESS, argparse.SUPPRESS) if keep_earlier else (0, False)
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_mutually_exclusive_group()
    group.add_argument(
        "-v", "--verbose", action="count", default=verbose, help="more log output (-vv: debug)"
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=quiet, help="only errors; no progress bars"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``omeloc`` command."""
    parser = argparse.ArgumentParser(
        prog="omeloc",
        description=(
            "Virtual stains for OME-Zarr HCS plates: train, predict into the plate, evaluate."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_verbosity(keep_earlier=False)],
        epilog=examples("omeloc synth plate.zarr", "omeloc info plate.zarr"),
    )
    parser.add_argument("--version", action="version", version=f"omeloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    after = _verbosity(keep_earlier=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            parents=[after],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=examples(*module.EXAMPLES),
        )
        module.add_arguments(p)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = (
        logging.ERROR
        if args.quiet
        else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:
        for noisy in ("distributed", "ome_zarr", "numcodecs"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``omeloc`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    _configure_logging(args)
    args.progress = (
        not args.quiet
    )  # a bar on a terminal, plain lines in a log (omeloc.progress.reporter)
    try:
        code = COMMANDS[args.command].run(args)
    except OmelocError as err:
        print(f"omeloc {args.command}: error: {err}", file=sys.stderr)
        return int(
            getattr(err, "exit_code", EXIT_BAD_INPUT)
        )  # bad input: 2; a store that kept failing: 1
    except KeyboardInterrupt:
        print(f"omeloc {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # an unexpected failure: one line, the traceback with -v
        known = known_failure(
            err
        )  # the environment (an unreachable store, ...): bad input, not a bug
        if known is not None and not args.verbose:
            print(f"omeloc {args.command}: error: {known}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.verbose:
            raise
        print(
            f"omeloc {args.command}: failed: {type(err).__name__}: {err} (run with -v for the "
            "traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK if code is None else code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
