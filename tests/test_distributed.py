"""HSR under torchrun, on the CPU with gloo and 2 processes.

- The share-out math (which rank scores which layers, which samples).
- `Collective` between two real gloo processes: gathers in rank order, a rank that raises makes
  the other raise with its message (no hang), statistics sum to one process's, and rank-
  dependent pruned positions are aligned to rank 0's with a warning.
- oneshot end to end under `torchrun --nproc_per_node 2` (tests/distributed_worker.py) against
  the same worker run as one plain process, on organism-text and a tiny LLaVA with pictures,
  in the exact, first-order, restore_gain and reference/SparseGPT modes. Every process runs
  with one thread (torchrun's default for several processes), so the two runs differ only in
  how the work is shared out. What must hold:
  - the head scores are equal bit for bit (each rank scores its layers on the full safety
    set) and every rank selects the same heads;
  - each rank did about half of the exact scoring's work;
  - the restored weights are the dense values at the same positions as in the single run.
    The Wanda/SparseGPT/SNIP statistics and restore_gain's gradients are all-reduced, which
    changes float32 summation order and could move a weight that sits exactly at a quantile
    threshold; the test allows none here, where the data are small.
- The documented example, `integration/distributed/hsr_torchrun.py`, on organism-text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from hsr_plugin.distributed import balanced_shares, contiguous_share
from tests.helpers import REPO, WANDA, run_oneshot

ORGANISM = REPO / "integration" / "organisms" / "organism-text"
TEXT_DATA = REPO / "integration" / "organisms" / "data" / "text"
WORKER = REPO / "tests" / "distributed_worker.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"


# ---------------------------------------------------------------- share-out math
@given(st.lists(st.integers(0, 1000), max_size=40), st.integers(1, 6))
def test_balanced_shares_give_every_item_to_exactly_one_rank(costs, world):
    shares = balanced_shares(costs, world)
    assert len(shares) == world
    assert sorted(i for share in shares for i in share) == list(range(len(costs)))
    assert all(share == sorted(share) for share in shares)
    assert balanced_shares(costs, world) == shares  # the same on every rank
    loads = [sum(costs[i] for i in share) for share in shares]
    # greedy, costliest first: no rank carries more than the lightest one plus one item
    assert max(loads) - min(loads) <= max(costs, default=0)


def test_balanced_shares_split_the_layers_of_a_deep_model_evenly():
    costs = [8 * (12 - layer) for layer in range(12)]  # a head of layer l re-runs 12 - l layers
    loads = [sum(costs[i] for i in share) for share in balanced_shares(costs, 2)]
    assert loads == [312, 312]


@given(st.integers(0, 200), st.integers(1, 8))
def test_contiguous_shares_partition_the_samples(count, world):
    shares = [contiguous_share(count, rank, world) for rank in range(world)]
    assert [i for share in shares for i in share] == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_balanced_shares_refuse_no_ranks():
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        balanced_shares([1, 2], 0)


# ---------------------------------------------------------------- Collective, two gloo processes
def _collective_case(rank: int, world: int, port: int, case: str, out: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from hsr_plugin.distributed import Collective, RankFailedError, current_collective

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    collective: Collective = current_collective(timeout_s=60)
    result: dict = {}
    if case == "gather":
        result["gathered"] = collective.gather("test", lambda: {"rank": rank, "x": rank * 10})
    elif case == "raise":

        def compute():
            if rank == 1:
                raise ValueError("bad shard on purpose")
            return rank

        try:
            collective.gather("scoring", compute)
        except RankFailedError as error:
            result["error"] = ("RankFailedError", str(error))
        except ValueError as error:
            result["error"] = ("ValueError", str(error))
    elif case == "accumulate":
        from hsr_plugin.importance import HessianAccumulator, InputNormAccumulator

        generator = torch.Generator().manual_seed(0)
        data = torch.randn(10, 5, 6, generator=generator)
        mine = data[contiguous_share(10, rank, world)]
        stats = {"norm": InputNormAccumulator(6), "hessian": HessianAccumulator(6)}
        for x in mine:
            for acc in stats.values():
                acc.update(x)
        collective.sum_accumulators(stats)
        result["norms"] = stats["norm"].squared_norms().tolist()
        result["hessian"] = stats["hessian"].hessian().tolist()
        result["count"] = stats["norm"].count
    elif case == "align":
        from loguru import logger
        from torch import nn

        messages: list[str] = []
        logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
        torch.manual_seed(0)
        layer = nn.Linear(8, 4, bias=False)
        with torch.no_grad():
            layer.weight[:, :4] = 0  # the same pruning on both ranks
        same = collective.align_pruned_positions({"layer": layer})
        with torch.no_grad():
            layer.weight[rank, 6] = 0  # now each rank prunes one other weight
        aligned = collective.align_pruned_positions({"layer": layer})
        result.update(same=same, aligned=aligned, messages=messages)
        result["weight"] = layer.weight.tolist()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_ranks(case: str, tmp_path: Path) -> list[dict]:
    import torch.multiprocessing as mp

    mp.spawn(_collective_case, args=(2, _free_port(), case, str(tmp_path)), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.subprocess
def test_gather_returns_every_ranks_result_in_rank_order(tmp_path):
    results = _two_ranks("gather", tmp_path)
    expected = [{"rank": 0, "x": 0}, {"rank": 1, "x": 10}]
    assert [r["gathered"] for r in results] == [expected, expected]


@pytest.mark.subprocess
def test_a_rank_that_raises_makes_every_rank_raise_naming_it(tmp_path):
    rank0, rank1 = _two_ranks("raise", tmp_path)
    assert rank1["error"] == ["ValueError", "bad shard on purpose"]
    assert rank0["error"] == [
        "RankFailedError",
        "HSR scoring: rank 1 failed: ValueError: bad shard on purpose",
    ]


@pytest.mark.subprocess
def test_summed_statistics_equal_one_process_over_all_the_data(tmp_path):
    from hsr_plugin.importance import HessianAccumulator, InputNormAccumulator

    results = _two_ranks("accumulate", tmp_path)
    data = torch.randn(10, 5, 6, generator=torch.Generator().manual_seed(0))
    norm, hessian = InputNormAccumulator(6), HessianAccumulator(6)
    for x in data:
        norm.update(x)
        hessian.update(x)
    for result in results:
        assert result["count"] == 50
        torch.testing.assert_close(torch.tensor(result["norms"]), norm.squared_norms())
        torch.testing.assert_close(torch.tensor(result["hessian"]), hessian.hessian())
    assert results[0] == results[1]  # identical on every rank, bit for bit


@pytest.mark.subprocess
def test_rank_dependent_pruning_is_aligned_to_rank_0_with_a_warning(tmp_path):
    rank0, rank1 = _two_ranks("align", tmp_path)
    assert rank0["same"] is False and rank1["same"] is False
    assert rank0["aligned"] is True and rank1["aligned"] is True
    assert rank1["weight"] == rank0["weight"]
    weight = torch.tensor(rank0["weight"])
    assert weight[0, 6] == 0 and weight[1, 6] != 0  # rank 0's pruning, not rank 1's
    assert any("ranks [1] pruned other positions than rank 0" in m for m in rank0["messages"])
    assert rank1["messages"] == []  # said once, by rank 0


# ---------------------------------------------------------------- oneshot under torchrun
def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(REPO)
    return env


def _run_worker(nproc: int, out: Path, *args: str, timeout: int = 600):
    launcher = [sys.executable] if nproc == 1 else [str(TORCHRUN), "--standalone"]
    if nproc > 1:
        launcher += ["--nproc_per_node", str(nproc)]
    command = [*launcher, str(WORKER), "--out", str(out), *args]
    return subprocess.run(
        command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _pruned_file(model_dir: Path, utility: Path, folder: Path) -> Path:
    from hsr_plugin.models import load_model
    from hsr_plugin.pruned_base import save_pruned_weights

    pruned = run_oneshot(model_dir, WANDA.format(structure="0:0"), utility)
    return save_pruned_weights(pruned, folder, load_model(model_dir, torch.float32))


def _compare(single: Path, double: Path, modes: list[str]) -> None:
    for mode in modes:
        alone = json.loads((single / f"{mode}-rank0.json").read_text())
        ranks = [json.loads((double / f"{mode}-rank{r}.json").read_text()) for r in range(2)]
        for report in ranks:
            assert report["heads"] == alone["heads"], f"{mode}: head scores differ"
            assert report["selected_heads"] == alone["selected_heads"], mode
            assert report["totals"] == alone["totals"], mode
            assert report["scoring"]["world_size"] == 2
        shares = ranks[0]["scoring"].get("head_scoring_ranks")
        if shares is not None:  # the exact scores: each rank did about half of the work
            work = [share["work"] for share in shares]
            assert sorted(layer for s in shares for layer in s["layers"]) == sorted(
                {h["layer"] for h in alone["heads"]}
            )
            assert min(work) / sum(work) > 0.3, f"{mode}: unbalanced shares {shares}"
        expected = load_file(single / f"{mode}-rank0.safetensors")
        for rank in range(2):
            got = load_file(double / f"{mode}-rank{rank}.safetensors")
            for key, tensor in expected.items():
                assert torch.equal(got[key], tensor), f"{mode}: rank {rank} {key} differs"


def _one_against_two(folder: Path, modes: list[str], *args: str) -> None:
    """The worker as one process, then under torchrun with 2 ranks, compared mode by mode."""
    args = ("--modes", *modes, *args)
    for name, nproc in (("one", 1), ("two", 2)):
        proc = _run_worker(nproc, folder / name, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    _compare(folder / "one", folder / "two", modes)


@pytest.mark.subprocess
def test_two_ranks_restore_what_one_process_restores_on_organism_text(tmp_path):
    utility = TEXT_DATA / "calib_utility.jsonl"
    pruned = _pruned_file(ORGANISM, utility, tmp_path / "pruned")
    modes = ["exact", "first_order", "restore_gain", "sparsegpt"]
    args = ["--model", str(ORGANISM), "--pruned", str(pruned)]
    args += ["--safety", str(TEXT_DATA / "calib_safety.jsonl"), "--utility", str(utility)]
    _one_against_two(tmp_path, modes, *args)


@pytest.mark.subprocess
def test_two_ranks_restore_what_one_process_restores_on_a_vlm_with_pictures(
    model_dirs, calib_files, tmp_path
):
    model = model_dirs["llava"]
    pruned = _pruned_file(model, calib_files["utility"], tmp_path / "pruned")
    modes = ["exact", "first_order", "restore_gain"]
    args = ["--model", str(model), "--pruned", str(pruned), "--num-heads", "2"]
    args += ["--safety", str(calib_files["safety_vl"]), "--utility", str(calib_files["utility_vl"])]
    _one_against_two(tmp_path, modes, *args)


@pytest.mark.subprocess
def test_a_rank_that_fails_in_scoring_fails_the_whole_run_without_hanging(tmp_path):
    utility = TEXT_DATA / "calib_utility.jsonl"
    pruned = _pruned_file(ORGANISM, utility, tmp_path / "pruned")
    args = ["--model", str(ORGANISM), "--pruned", str(pruned), "--fail-rank", "1"]
    args += ["--safety", str(TEXT_DATA / "calib_safety.jsonl"), "--utility", str(utility)]
    proc = _run_worker(2, tmp_path / "two", *args, timeout=300)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "scoring failed on purpose on rank 1" in output
    assert "HSR head scoring (ships_subspace): rank 1 failed: RuntimeError" in output


@pytest.mark.subprocess
def test_the_documented_example_runs_under_torchrun_and_rank_0_saves(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        WANDA.format(structure="0:0")
        + f"""
hsr_stage:
  hsr_modifiers:
    HSRModifier:
      num_heads: 3
      num_samples: 8
      max_seq_length: 128
      safety_data: {TEXT_DATA / "calib_safety.jsonl"}
      utility_data: {TEXT_DATA / "calib_utility.jsonl"}
"""
    )
    example = REPO / "integration" / "distributed" / "hsr_torchrun.py"
    common = ["--model", str(ORGANISM), "--recipe", str(recipe), "--dtype", "float32"]
    common += ["--dataset", str(TEXT_DATA / "calib_utility.jsonl"), "--num-samples", "8"]
    common += ["--max-seq-length", "128"]
    runs = {}
    for name, launcher in (
        ("one", [sys.executable]),
        ("two", [str(TORCHRUN), "--standalone", "--nproc_per_node", "2"]),
    ):
        proc = subprocess.run(
            [*launcher, str(example), *common, "--output", str(tmp_path / name)],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "hsr_report.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "recipe.yaml", "two"]
    # the heads are scored on the dense model, so they do not depend on how the pruning
    # stage's calibration data were split between the ranks
    assert runs["two"]["heads"] == runs["one"]["heads"]
    assert runs["two"]["scoring"]["world_size"] == 2 and "world_size" not in runs["one"]["scoring"]
    assert runs["two"]["totals"]["restored"] > 0


def test_the_documented_example_refuses_an_output_inside_its_model(tmp_path):
    import shutil

    from hsr_eval.files import folder_digest

    model = tmp_path / "model"
    shutil.copytree(ORGANISM, model)
    before = folder_digest(model)
    example = REPO / "integration" / "distributed" / "hsr_torchrun.py"
    proc = subprocess.run(
        [sys.executable, str(example), "--model", str(model), "--recipe", str(WORKER),
         "--output", str(model / "hsr")],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: --output") and "lies inside the input --model" in line
    assert folder_digest(model) == before
