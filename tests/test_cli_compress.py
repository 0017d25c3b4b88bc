"""`hsr compress` (hsr_plugin.cli.compress): oneshot with a recipe, atomic output that reproduces
the run, and what a stopped or concurrent run leaves behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hsr_plugin.cli import main
from tests.helpers import (
    assert_inputs_untouched,
    compress_args,
    compress_tiny,
    folder_digest,
    log_messages,
    work_args,
)

REPO = Path(__file__).resolve().parents[1]


def _hsr_process(work, output):
    hsr = Path(sys.executable).with_name("hsr")
    return subprocess.Popen(
        [str(hsr), *work_args(work, output)],
        cwd=work["root"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _staging(out: Path) -> list[Path]:
    return [p for p in out.parent.glob(f".{out.name}.pid*") if p.is_dir()]


def _wait_for_staging(out: Path, proc, timeout: float = 180.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not _staging(out):
        assert proc.poll() is None, f"hsr ended before staging: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no staging folder appeared"
        time.sleep(0.02)


def test_compress_writes_model_report_and_resolved_recipe(
    model_dirs, calib_files, tmp_path, monkeypatch
):
    import llmcompressor  # noqa: F401  (it resets loguru's sinks when first imported)

    monkeypatch.chdir(REPO)
    before = folder_digest(model_dirs["llama"])
    out = tmp_path / "out"
    with log_messages() as lines:
        assert compress_tiny(model_dirs["llama"], out, calib_files) == 0
    assert f"hsr compress: {model_dirs['llama']} with recipes/wanda_hsr.yaml -> {out}" in lines
    assert f"hsr compress: model saved to {out}, report {out / 'hsr_report.json'}" in lines
    report = json.loads((out / "hsr_report.json").read_text())
    assert report["config"]["num_heads"] == 2 and report["totals"]["restored"] > 0
    assert (out / "config.json").is_file() and (out / "hsr_recipe_resolved.yaml").is_file()
    assert "num_heads: 2" in (out / "hsr_recipe_resolved.yaml").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], (
        "staging folder left behind"
    )
    assert folder_digest(model_dirs["llama"]) == before
    with pytest.raises(SystemExit, match="exists and is not empty"):
        compress_tiny(model_dirs["llama"], out, calib_files)
    assert compress_tiny(model_dirs["llama"], out, calib_files, "--overwrite") == 0
    # --num-samples reaches the pruning stage: two calibration rows prune differently than six
    fewer = tmp_path / "fewer"
    assert compress_tiny(model_dirs["llama"], fewer, calib_files, "--num-samples", "2") == 0
    assert (fewer / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()


def test_compress_without_hsr_writes_no_report(model_dirs, calib_files, tmp_path, monkeypatch):
    import llmcompressor  # noqa: F401  (it resets loguru's sinks when first imported)

    monkeypatch.chdir(REPO)
    out = tmp_path / "pruned"
    args = compress_args(model_dirs["llama"], "recipes/wanda.yaml", out, calib_files["utility"])
    with log_messages() as lines:
        assert main(args) == 0
    assert f"hsr compress: model saved to {out}" in lines
    assert (out / "model.safetensors").is_file() and not (out / "hsr_report.json").exists()


def test_dtype_loads_and_saves_the_model_in_it_and_restores_exact_dense_values(work, tmp_path):
    """--dtype float32 on a bfloat16 checkpoint: calibration and the saved model are float32,
    and every weight HSR restored equals the dense bfloat16 value exactly (bfloat16 is a subset
    of float32). A bfloat16 run on a CPU without native bfloat16 warns and names the option."""
    import torch
    from safetensors.torch import load_file, save_file

    from hsr_plugin.cli import compress

    dense = load_file(str(work["model"] / "model.safetensors"))
    half = {name: t.to(torch.bfloat16) for name, t in dense.items()}
    save_file(half, str(work["model"] / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "float32"
    assert main(work_args(work, out, "--dtype", "float32")) == 0
    saved = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    report = json.loads((out / "hsr_report.json").read_text())
    assert report["totals"]["restored"] > 0
    for name, tensor in saved.items():
        kept = tensor != 0
        assert torch.equal(tensor[kept], half[name].float()[kept]), name

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx2 fma\n")
    assert not compress.cpu_has_bfloat16(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert compress.cpu_has_bfloat16(cpuinfo)


def test_a_pruning_stage_that_pruned_nothing_fails(work, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError) as err:
        main(work_args(work, out, "--pipeline", "datafree"))
    assert str(err.value) == (
        "HSRModifier found no pruned weights in the attention of the selected heads' layers: "
        "WandaPruningModifier pruned nothing there. Check its targets and sparsity, and give it "
        "calibration data (the 'datafree' pipeline runs none)."
    )
    assert not out.exists(), "a failed run must leave no output"
    assert_inputs_untouched(work)


def test_restoring_nothing_is_a_warning(work, tmp_path):
    with log_messages("WARNING") as messages:
        out = tmp_path / "out"
        extra = ["--set", "HSRModifier.utility_top=0", "--set", "HSRModifier.utility_max=0",
                 "--set", "HSRModifier.safety_top=0.001"]  # fmt: skip
        assert main(work_args(work, out, *extra)) == 0
    assert (
        "HSR restored no weights: no pruned weight of the selected heads is a candidate. Raise "
        "safety_top (q=0.001), lower utility_top (p=0.0) or raise utility_max (p_max=0.0), or "
        "select more heads (num_heads)."
    ) in messages, messages
    assert json.loads((out / "hsr_report.json").read_text())["totals"]["restored"] == 0
    assert_inputs_untouched(work)


def test_the_saved_recipe_reproduces_the_run_and_outputs_are_readable(work, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(work_args(work, first)) == 0
    for name in ("hsr_recipe_resolved.yaml", "recipe.yaml"):
        text = (first / name).read_text()
        assert ".first." not in text and "report_path" not in text, f"{name}: {text}"
    resaved = tmp_path / "resolved.yaml"
    shutil.copy(first / "hsr_recipe_resolved.yaml", resaved)
    args = work_args(work, second)
    args[args.index("--recipe") + 1] = str(resaved)
    assert main(args) == 0
    a, b = (json.loads((d / "hsr_report.json").read_text()) for d in (first, second))
    assert a["selected_heads"] == b["selected_heads"] and a["totals"] == b["totals"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(first.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((first / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    assert_inputs_untouched(work)


@pytest.mark.subprocess
def test_sigterm_leaves_nothing_behind(work, tmp_path):
    import signal

    out = tmp_path / "out"
    proc = _hsr_process(work, out)
    _wait_for_staging(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "stopped by signal 15" in err, err[-2000:]
    assert not _staging(out) and not out.exists()
    assert not list(tmp_path.glob(".out.lock"))
    assert_inputs_untouched(work)


@pytest.mark.subprocess
def test_a_killed_runs_staging_is_removed_by_the_next_run(work, tmp_path):
    out = tmp_path / "out"
    proc = _hsr_process(work, out)
    _wait_for_staging(out, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert _staging(out), "SIGKILL cannot clean up: the staging folder stays"
    assert main(work_args(work, out)) == 0
    assert not _staging(out) and (out / "hsr_report.json").is_file()
    assert_inputs_untouched(work)


@pytest.mark.subprocess
def test_two_concurrent_runs_to_one_output_one_wins(work, tmp_path):
    out = tmp_path / "out"
    procs = [_hsr_process(work, out) for _ in range(2)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], errors
    loser = errors[[p.returncode for p in procs].index(2)]
    assert re.search(r"error: (another process .* is writing|output .* exists)", loser), loser
    report = json.loads((out / "hsr_report.json").read_text())
    assert report["totals"]["restored"] > 0 and (out / "config.json").is_file()
    assert not _staging(out)
    assert_inputs_untouched(work)
