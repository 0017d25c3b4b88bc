"""HSR inside llm-compressor's distributed oneshot: one process per device, under torchrun.

    torchrun --nproc_per_node 4 integration/distributed/hsr_torchrun.py \\
        --model Qwen/Qwen2.5-VL-72B-Instruct --recipe qwen2vl_wanda_hsr \\
        --dataset my_calibration.jsonl --output ./qwen72b-wanda50-hsr --offload

What each rank does, as llm-compressor's distributed oneshot guide lays it out:
- joins the process group (`compressed_tensors.distributed.init_dist` on accelerators; gloo on a
  machine without one, one process per CPU share);
- loads the model inside compressed-tensors' `load_offloaded_model` (rank 0 reads the weights;
  with `--offload`, `device_map="auto_offload"` keeps what does not fit on the CPU or disk);
- calibrates the pruning stage on its own share of the data (oneshot partitions a dataset that
  is the same on every rank);
- runs HSR, which shares out its head scoring and statistics (`hsr_plugin.distributed`);
- rank 0 saves the compressed model, its processor and the HSR report, atomically.

Without torchrun (a plain `python` run) it is an ordinary single-process oneshot, which is how
its output is compared with a distributed run's.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id or local folder")
    parser.add_argument(
        "--recipe", required=True, help="an llm-compressor YAML recipe, or a bundled one by name"
    )
    parser.add_argument("--output", required=True, type=Path, help="new folder (rank 0 saves)")
    parser.add_argument(
        "--dataset", default="hsr-utility-mini", help="pruning calibration set (HSR's forms)"
    )
    parser.add_argument("--num-samples", type=int, default=64, help="over all ranks together")
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument(
        "--offload", action="store_true", help='load with device_map="auto_offload"'
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout-s", type=float, default=1800.0, help="process-group timeout (seconds)"
    )
    return parser.parse_args(argv)


def join_process_group(timeout_s: float) -> bool:
    """Join torchrun's process group; False when not launched by torchrun."""
    import torch
    import torch.distributed as dist

    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    if torch.accelerator.is_available():
        from compressed_tensors.distributed import init_dist

        init_dist()
    else:  # init_dist assumes an accelerator; on the CPU the ranks talk over gloo
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hsr_eval.output_rules import check_apart_from_inputs
    from hsr_plugin.errors import MissingInputError
    from hsr_plugin.recipe_overrides import resolve_recipe

    try:
        recipe = resolve_recipe(args.recipe)
        if args.output.exists():
            raise SystemExit(f"error: --output {args.output} exists; choose a new folder")
        local = [("--model", args.model), ("--dataset", args.dataset)]
        check_apart_from_inputs(
            args.output, [("--recipe", recipe)] + [(k, v) for k, v in local if Path(v).exists()]
        )
    except MissingInputError as missing:  # one line, before any process group or model
        print(f"error: --recipe: {missing}", file=sys.stderr)
        return 2
    except SystemExit as refused:
        print(refused.code, file=sys.stderr)
        return 2
    distributed = join_process_group(args.timeout_s)

    import torch
    import torch.distributed as dist
    import yaml
    from compressed_tensors.offload import load_offloaded_model
    from llmcompressor import oneshot
    from transformers import AutoConfig

    import hsr_plugin  # noqa: F401  registers HSRModifier
    from hsr_eval.files import published_dir, write_json_atomic
    from hsr_plugin.calibration import load_processor
    from hsr_plugin.cli.compress import REPORT_NAME, hsr_reports
    from hsr_plugin.models import auto_model_class
    from hsr_plugin.oneshot_data import calibration_kwargs

    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(args.seed)
    processor = load_processor(args.model)
    model_class = auto_model_class(AutoConfig.from_pretrained(args.model))
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    load = {"dtype": dtype}
    if args.offload or not torch.accelerator.is_available():
        # without an accelerator, the CPU is where the model lives: load_offloaded_model's
        # other device maps ask the accelerator for its memory
        load["device_map"] = "auto_offload"
    with load_offloaded_model(model_class):
        model = model_class.from_pretrained(args.model, **load).eval()
    recipe = yaml.safe_load(recipe.read_text())
    calibration = calibration_kwargs(
        args.dataset, processor, args.num_samples, args.max_seq_length, args.seed
    )
    oneshot(
        model=model,
        processor=processor,
        recipe=yaml.safe_dump(recipe, sort_keys=False),
        max_seq_length=args.max_seq_length,
        shuffle_calibration_samples=False,
        **calibration,
    )
    # save_pretrained is collective under torchrun (every rank compresses, rank 0 writes), so
    # every rank calls it, on the folder rank 0 stages
    if rank == 0:
        with published_dir(args.output) as staging:
            if distributed:
                dist.broadcast_object_list([str(staging)], src=0)
            model.save_pretrained(staging, save_compressed=True)
            processor.save_pretrained(staging)
            reports = hsr_reports()
            if reports:
                write_json_atomic(staging / REPORT_NAME, reports[-1])
        print(f"saved to {args.output}")
    else:
        staging = [None]
        dist.broadcast_object_list(staging, src=0)
        model.save_pretrained(staging[0], save_compressed=True)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
