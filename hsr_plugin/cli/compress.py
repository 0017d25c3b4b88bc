"""`hsr compress`: llm-compressor's `oneshot` with a recipe, published atomically with a report."""

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

__all__ = ["PIPELINES", "REPORT_NAME", "add_parser", "compress", "hsr_reports"]

REPORT_NAME = "hsr_report.json"
PIPELINES = ("independent", "sequential", "basic", "datafree")  # llm-compressor 0.14's


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "compress",
        parents=parents,
        help="run llm-compressor's oneshot with a recipe (HSR registered)",
    )
    add_run_options(parser, output_help="output directory (written atomically)")
    parser.add_argument(
        "--pipeline",
        default="independent",
        choices=PIPELINES,
        help="oneshot pipeline (default independent)",
    )
    parser.add_argument(
        "--sequential-targets", nargs="*", default=None, help="decoder layer class names"
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="load the model in this dtype for calibration; the checkpoint is saved in it "
        "(default auto: the checkpoint's own). float32 on a CPU without bfloat16 support, where "
        "a bfloat16 model calibrates many times slower",
    )
    parser.set_defaults(func=compress)


def compress(args: argparse.Namespace) -> Path:
    """Run oneshot into a temporary sibling folder, then move it into place."""
    import yaml

    from hsr_eval.files import published_dir, write_json_atomic

    output, recipe = check_run(args)

    import torch
    from llmcompressor import oneshot

    from hsr_plugin.models import load_model

    torch.manual_seed(args.seed)  # oneshot's calibration sampler shuffles with torch's generator
    logger.info(f"hsr compress: {args.model} with {args.recipe} -> {output}")
    # loaded here with its family's auto class: oneshot would load any path as a causal LM
    model = load_model(args.model, args.dtype)
    warn_if_slow_dtype(model)
    with stop_cleanly_on_sigterm("compress"), published_dir(output) as staging:
        # checked again under the output's lock: a run that finished meanwhile is not replaced
        check_output(output, args.overwrite, [])
        oneshot_kwargs = dict(
            model=model,
            processor=args.model,
            recipe=yaml.safe_dump(recipe, sort_keys=False),
            output_dir=str(staging),
            num_calibration_samples=args.num_samples,
            max_seq_length=args.max_seq_length,
            pipeline=args.pipeline,
        )
        if args.sequential_targets:
            oneshot_kwargs["sequential_targets"] = args.sequential_targets
        oneshot_kwargs.update(dataset_kwargs(args))
        oneshot(**oneshot_kwargs)
        # The report is taken from the modifier, so no temporary path enters a saved recipe:
        # hsr_recipe_resolved.yaml (and llm-compressor's recipe.yaml) reproduce the run as given.
        reports = hsr_reports()
        if reports:
            write_json_atomic(staging / REPORT_NAME, reports[-1])
        (staging / RESOLVED_RECIPE).write_text(yaml.safe_dump(recipe, sort_keys=False))
    report = output / REPORT_NAME
    logger.info(
        f"hsr compress: model saved to {output}" + (f", report {report}" if report.exists() else "")
    )
    return output


def cpu_has_bfloat16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX); without it, PyTorch's
    bfloat16 matmul on the CPU is emulated (measured here on an AVX2 CPU: 60x float32's time)."""
    from hsr_eval.launch import cpu_flag

    if not Path(cpuinfo).is_file():
        return True  # unknown: say nothing
    return cpu_flag("avx512_bf16", cpuinfo) or cpu_flag("amx_bf16", cpuinfo)


def warn_if_slow_dtype(model) -> None:
    import torch

    on_cpu = not torch.accelerator.is_available()
    if on_cpu and model.dtype == torch.bfloat16 and not cpu_has_bfloat16():
        logger.warning(
            "hsr compress: the model is bfloat16 and this CPU has no native bfloat16 "
            "(AVX512-BF16 or AMX): calibration runs many times slower than in float32; pass "
            "--dtype float32 (the checkpoint is then saved in float32)"
        )


def hsr_reports() -> list[dict]:
    """The reports of the HSRModifiers in the active llm-compressor session, in recipe order."""
    from llmcompressor.core import active_session

    from hsr_plugin import HSRModifier

    modifiers = getattr(active_session().lifecycle.recipe, "modifiers", None) or []
    return [m.report for m in modifiers if isinstance(m, HSRModifier) and m.report is not None]
