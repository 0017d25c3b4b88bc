"""The options that `hsr compress` and `hsr sweep` share (a leaf: it imports no subcommand)."""

from __future__ import annotations

import argparse

__all__ = ["add_run_options"]


def add_run_options(parser: argparse.ArgumentParser, output_help: str) -> None:
    """The options of a run that prunes with a recipe (`hsr compress`, `hsr sweep`)."""
    parser.add_argument(
        "--model", required=True, help="model id or local directory (never modified)"
    )
    parser.add_argument(
        "--recipe",
        required=True,
        help="llm-compressor YAML recipe: a path, or a bundled recipe by name (e.g. wanda_hsr)",
    )
    parser.add_argument("--output", required=True, help=output_help)
    parser.add_argument(
        "--dataset",
        required=True,
        help="the pruning stage's calibration data: a conversational JSONL in the plugin's "
        "format, or a dataset name/id that oneshot understands (e.g. open_platypus)",
    )
    parser.add_argument(
        "--num-samples", type=int, default=128, help="calibration samples (default 128)"
    )
    parser.add_argument("--max-seq-length", type=int, default=512, help="default 512")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling calibration rows")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="MODIFIER.FIELD=VALUE",
        help="override a recipe field, e.g. --set HSRModifier.num_heads=4 (repeatable)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output folder that an earlier `hsr` run wrote",
    )
