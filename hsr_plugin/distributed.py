"""HSR inside llm-compressor's distributed oneshot (`torchrun --nproc_per_node N`).

When `torch.distributed` is initialized (`compressed_tensors.distributed.is_distributed()`),
every rank holds the whole model and runs HSR's stages, and the work is shared out:
- exact head scoring is split by layer, balanced by cost with compressed-tensors'
  `greedy_bin_packing` (a head of layer l re-runs layers l..L-1). Each rank scores its layers'
  heads on the FULL safety set, with the same batches and the same groups of heads per pass
  as a single process, so every score is the one a single process computes, bit for bit
  (whole layers, not single heads, are shared out for that reason: a layer's heads share one
  cached input and are run in groups that depend on the batch);
- first-order passes (head and MLP-channel attribution) are split by batch; each batch's
  per-unit contribution is all-gathered and summed in batch order on every rank, which is
  the order a single process sums them in: bit-identical too;
- neuron statistics (Wanda/SparseGPT/SNIP importance, restore_gain's gradients) are split by
  sample and all-reduced as sums and counts: equal to a single process's up to float32
  summation order, and identical on every rank;
- before restoring, the pruned positions of the planned matrices are compared across ranks by
  digest; if they differ (llm-compressor 0.14's Wanda and SparseGPT prune each rank on its
  own calibration partition), rank 0's weights of those matrices are used on every rank, with
  a warning: rank 0 is the rank that saves.

All of HSR's collectives run on a gloo group of its own with its own timeout, and every step
first gathers each rank's outcome: a rank that raises makes every rank raise, naming it,
rather than leaving the others waiting in a collective.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from compressed_tensors.distributed import greedy_bin_packing, is_distributed
from compressed_tensors.utils import align_module_device, update_offload_parameter
from loguru import logger
from torch import nn

__all__ = [
    "Collective",
    "RankFailedError",
    "balanced_shares",
    "contiguous_share",
    "current_collective",
]

T = TypeVar("T")


class RankFailedError(RuntimeError):
    """Another rank raised during one of HSR's distributed steps."""


def balanced_shares(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Indices of `costs` per rank, balanced by total cost (greedy bin packing: the costliest
    item first, to the least loaded rank; ties keep index order, so every rank computes the same
    shares). Each rank's indices come back in ascending order."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    items = list(range(len(costs)))
    _, bins, _ = greedy_bin_packing(items, world_size, item_weight_fn=lambda i: costs[i])
    return [sorted(share) for share in bins]


def contiguous_share(count: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s slice of `count` items, as llm-compressor partitions calibration data."""
    start = count * rank // world_size
    end = count * (rank + 1) // world_size
    return range(start, end)


@dataclass
class Collective:
    """HSR's view of the process group: its rank, the world size and a gloo group of its own."""

    rank: int
    world_size: int
    group: Any  # a torch.distributed ProcessGroup (gloo)

    def gather(self, step: str, compute: Callable[[], T]) -> list[T]:
        """Run `compute` here and return every rank's result, in rank order.

        Each rank's outcome is gathered first, so if any rank raised, every rank raises: this
        one with its own traceback, the others a `RankFailedError` naming it."""
        try:
            outcome: tuple[bool, Any] = (True, compute())
        except Exception as error:
            self._exchange(step, (False, f"{type(error).__name__}: {error}"))
            raise
        outcomes = self._exchange(step, outcome)
        return [value for _ok, value in outcomes]

    def settle(self, step: str, compute: Callable[[], T]) -> T:
        """Run `compute` here; once every rank has finished it without error, return the local
        result (a rank that raised makes every rank raise, as in `gather`)."""
        try:
            result = compute()
        except Exception as error:
            self._exchange(step, (False, f"{type(error).__name__}: {error}"))
            raise
        self._exchange(step, (True, None))
        return result

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over ranks, on `tensor`'s device and in its dtype (the reduction
        runs on the CPU, over HSR's gloo group)."""
        host = tensor.detach().to("cpu", copy=True).contiguous()
        dist.all_reduce(host, op=dist.ReduceOp.SUM, group=self.group)
        return host.to(tensor.device)

    def sum_counts(self, counts: Sequence[int]) -> list[int]:
        totals = torch.tensor(list(counts), dtype=torch.int64)
        dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=self.group)
        return [int(x) for x in totals]

    def sum_accumulators(self, accumulators: dict[str, Any]) -> None:
        """Replace each accumulator's running sum and count by their sums over ranks (the
        accumulators of `hsr_plugin.importance`, keyed alike on every rank)."""
        names = sorted(accumulators)
        counts = self.sum_counts([accumulators[name].totals()[1] for name in names])
        for name, count in zip(names, counts, strict=True):
            total, _ = accumulators[name].totals()
            accumulators[name].set_totals(self.all_reduce_sum(total), count)

    def align_pruned_positions(self, modules: dict[str, nn.Module]) -> bool:
        """Make every rank's weights of `modules` rank 0's if the ranks pruned different
        positions there; True when they had to be aligned."""
        digest = pruned_positions_digest(modules)
        digests = self.gather("compare pruned positions", lambda: digest)
        if all(d == digests[0] for d in digests):
            return False
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        if self.rank == 0:
            logger.warning(
                f"HSR: ranks {differing} pruned other positions than rank 0 in the selected "
                "heads' matrices (llm-compressor's Wanda/SparseGPT prune each rank on its own "
                "share of the calibration data); HSR restores against rank 0's pruned weights, "
                "the ones rank 0 saves"
            )
        for _name, module in sorted(modules.items()):
            with align_module_device(module):
                weight = module.weight.detach()
                host = weight.to("cpu", copy=True).contiguous()
                dist.broadcast(host, src=0, group=self.group)
                if self.rank != 0:
                    update_offload_parameter(module, "weight", host.to(weight.device))
        return True

    def _exchange(self, step: str, outcome: tuple[bool, Any]) -> list[tuple[bool, Any]]:
        outcomes: list = [None] * self.world_size
        dist.all_gather_object(outcomes, outcome, group=self.group)
        failed = [(r, msg) for r, (ok, msg) in enumerate(outcomes) if not ok and r != self.rank]
        if failed and outcome[0]:
            rank, message = failed[0]
            raise RankFailedError(f"HSR {step}: rank {rank} failed: {message}")
        return outcomes


def pruned_positions_digest(modules: dict[str, nn.Module]) -> str:
    """sha256 over the zero positions of every module's weight, in name order."""
    digest = hashlib.sha256()
    for name, module in sorted(modules.items()):
        with align_module_device(module):
            zeros = (module.weight.detach() == 0).cpu().contiguous()
        digest.update(name.encode())
        digest.update(zeros.numpy().tobytes())
    return digest.hexdigest()


def current_collective(timeout_s: float) -> Collective | None:
    """HSR's collective when torch.distributed is initialized (else None). Every rank must call
    this at the same point: creating the gloo group is itself a collective."""
    if not is_distributed():
        return None
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return Collective(dist.get_rank(), dist.get_world_size(), group)
