"""``omeloc show``: what a model takes and gives, before it runs over a plate."""

from __future__ import annotations

import argparse

from omeloc.cli._common import EXIT_OK

HELP = "Show a model (checkpoint or BMZ package): inputs, outputs, axes, normalization, training."
EXAMPLES = (
    "omeloc show models/actin-wave2",
    "omeloc show vs-model.zip",
    "omeloc show vs-model.zip --json",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``omeloc show`` to ``parser``."""
    parser.add_argument(
        "model", help="checkpoint folder, or a BMZ package (.zip, folder or rdf.yaml)"
    )
    parser.add_argument("--json", action="store_true", help="print the model description as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the model's description."""
    import json

    from omeloc.modelio.show import show_model

    description, figures = show_model(args.model)
    if args.json:
        print(json.dumps(description.to_json(), indent=2))
    else:
        print(description.text())
        for f in figures:
            print(f"  figure: {f}")
    return EXIT_OK
