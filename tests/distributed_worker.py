"""One rank of the distributed tests (tests/test_distributed.py), launched by torchrun; run with
plain `python` it is the single-process reference.

It joins a gloo process group (compressed-tensors' `init_dist` assumes an accelerator), loads
the model on every rank, and runs oneshot with a data-free pruning stage (the saved pruned
weights of `--pruned`, so every rank starts from the same pruned model unless `--rank-pruned`
gives another rank its own), then HSR in each `--modes` entry. Each rank writes its HSR report
and its final weights under `--out` as `<mode>-rank<r>.json` / `.safetensors`.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import timedelta
from pathlib import Path

MODES = {
    "exact": {"head_score": "ships_subspace", "neuron_score": "wanda"},
    "first_order": {"head_score": "attribution", "neuron_score": "snip"},
    "restore_gain": {"head_score": "ships_kl", "neuron_score": "restore_gain"},
    "sparsegpt": {"head_score": "reference", "neuron_score": "sparsegpt"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--pruned", required=True)
    parser.add_argument("--rank-pruned", default=None, help="RANK=FILE: that rank's own pruning")
    parser.add_argument("--safety", required=True)
    parser.add_argument("--utility", required=True)
    parser.add_argument("--modes", nargs="+", default=["exact"], choices=sorted(MODES))
    parser.add_argument("--num-heads", type=int, default=3)
    parser.add_argument("--fail-rank", type=int, default=None, help="this rank raises in scoring")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    import torch
    import torch.distributed as dist

    distributed = "TORCHELASTIC_RUN_ID" in os.environ
    if distributed:
        dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = dist.get_rank() if distributed else 0

    from llmcompressor import oneshot
    from llmcompressor.core import active_session, reset_session
    from safetensors.torch import save_file

    from hsr_plugin import HSRModifier
    from hsr_plugin.calibration import load_processor
    from hsr_plugin.models import load_model
    from hsr_plugin.pruned_base import PrunedWeightsModifier

    if args.fail_rank == rank:
        import hsr_plugin.exact_head_scores as exact_head_scores

        def broken(*_args, **_kwargs):
            raise RuntimeError(f"scoring failed on purpose on rank {rank}")

        exact_head_scores._exact_scores = broken

    pruned = args.pruned
    if args.rank_pruned:
        which, path = args.rank_pruned.split("=", 1)
        if int(which) == rank:
            pruned = path
    processor = load_processor(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    for mode in args.modes:
        reset_session()
        torch.manual_seed(0)
        model = load_model(args.model, torch.float32)
        hsr = HSRModifier(
            num_heads=args.num_heads,
            safety_data=args.safety,
            utility_data=args.utility,
            num_samples=8,
            max_seq_length=128,
            batch_size=3,
            seed=0,
            distributed_timeout_s=60,
            **MODES[mode],
        )
        oneshot(model=model, processor=processor, recipe=[PrunedWeightsModifier(path=pruned), hsr])
        modifiers = active_session().lifecycle.recipe.modifiers
        report = next(m for m in modifiers if isinstance(m, HSRModifier)).report
        (args.out / f"{mode}-rank{rank}.json").write_text(json.dumps(report))
        weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(weights, str(args.out / f"{mode}-rank{rank}.safetensors"))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
