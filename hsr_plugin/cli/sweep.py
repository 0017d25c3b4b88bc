"""`hsr sweep`: prune once, run HSR for every point of a grid, score each (`hsr_plugin.sweep`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from hsr_plugin.cli.inputs import (
    RESOLVED_RECIPE,
    check_output,
    check_run,
    dataset_kwargs,
    stop_cleanly_on_sigterm,
)
from hsr_plugin.cli.options import add_run_options

__all__ = ["add_parser", "sweep"]


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "sweep",
        parents=parents,
        help="prune once, run HSR for every point of a grid, score each with the hsr_safety "
        "tasks' scorer: a table and a Pareto plot",
    )
    add_run_options(parser, output_help="output directory (written atomically)")
    parser.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="FIELD=V1,V2",
        help="an HSRModifier field and its values (repeatable; the grid is their product)",
    )
    parser.add_argument(
        "--eval-data",
        required=True,
        help="folder of held-out sets in the hsr_safety tasks' format (heldout_harmful.jsonl, "
        "heldout_borderline.jsonl, heldout_utility.jsonl; *_vision.jsonl for VLMs)",
    )
    parser.add_argument("--eval-limit", type=int, help="score the first N documents per task")
    parser.set_defaults(func=sweep)


def sweep(args: argparse.Namespace) -> Path:
    """Validate everything, then prune once and score every grid point into a staging folder."""
    import yaml

    from hsr_eval.files import published_dir
    from hsr_plugin.extras import require_plots
    from hsr_plugin.sweep import parse_grid, points, run_sweep, split_recipe

    require_plots("hsr sweep")  # its Pareto figure comes at the end: say it before any work
    eval_data = Path(args.eval_data)
    if not eval_data.is_dir():
        raise SystemExit(f"error: --eval-data {eval_data} is not a folder")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise SystemExit("error: --eval-limit must be >= 1")
    output, recipe = check_run(args, [("--eval-data", eval_data.resolve())])
    grid = parse_grid(args.grid)
    _pruning, base, _after = split_recipe(recipe)
    logger.info(f"hsr sweep: {len(points(base, grid))} points over one pruning -> {output}")

    import torch

    torch.manual_seed(args.seed)
    with stop_cleanly_on_sigterm("sweep"), published_dir(output) as staging:
        check_output(output, args.overwrite, [])
        run_sweep(
            args.model,
            recipe,
            grid,
            {
                "num_calibration_samples": args.num_samples,
                "max_seq_length": args.max_seq_length,
                **dataset_kwargs(args),
            },
            staging,
            eval_data.resolve(),
            args.eval_limit,
        )
        (staging / RESOLVED_RECIPE).write_text(yaml.safe_dump(recipe, sort_keys=False))
    logger.info(f"hsr sweep: table {output / 'sweep.md'}, plot {output / 'pareto.png'}")
    print((output / "sweep.md").read_text())
    return output
