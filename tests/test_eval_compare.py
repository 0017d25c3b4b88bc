"""hsr_eval.compare: model labels, sparsity, RSR, the benchmarks' tasks and the offline vLLM
backend's context limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsr_eval.compare import compute_rsr, language_sparsity, parse_models
from tests.helpers import LLAMA_CONFIG, write_checkpoint


def test_the_comparison_reads_the_benchmarks_tasks():
    from hsr_eval.compare import extract_metrics

    results = {
        "results": {
            "hsr_figstep": {
                "alias": "hsr_figstep",
                "attack_success_rate,none": 0.25,
                "attack_success_rate_stderr,none": 0.1,
                "refusal_rate,none": 0.75,
            },
            "hsr_xstest": {"over_refusal_rate,none": 0.125},
        },
        "n-samples": {
            "hsr_figstep": {"original": 500, "effective": 8},
            "hsr_xstest": {"original": 8},
        },
    }
    assert extract_metrics(results) == {
        "over_refusal_rate": 0.125,
        "asr_vision": 0.25,
        "refusal_rate_vision": 0.75,
        "n": {"hsr_figstep": 8, "hsr_xstest": 8},
        "tasks": {
            "hsr_figstep": {"attack_success_rate": 0.25, "refusal_rate": 0.75},
            "hsr_xstest": {"over_refusal_rate": 0.125},
        },
    }


@pytest.fixture
def lm_eval_commands(monkeypatch) -> list[list[str]]:
    """The lm-eval command lines hsr-compare would run; each stops the model's evaluation."""
    from hsr_eval import compare

    commands = []

    def capture(cmd, log_path, judge_log=None):
        commands.append(cmd)
        raise RuntimeError("stop here")

    monkeypatch.setattr(compare, "run_lm_eval", capture)
    return commands


def test_the_offline_vllm_backend_keeps_to_the_models_context_limit(tmp_path, lm_eval_commands):
    from hsr_eval import compare

    commands = lm_eval_commands
    organism = Path(compare.__file__).parents[1] / "organisms" / "organism-text"
    spec = compare.ModelSpec("dense", str(organism))
    with pytest.raises(RuntimeError, match="stop here"):
        compare.evaluate_model(spec, "vllm", "hsr_safety", tmp_path, None, None, "cpu")
    model_args = commands[0][commands[0].index("--model_args") + 1]
    assert "max_model_len=128," in model_args  # the organism's max_position_embeddings


def test_parallel_sizes_reach_vllm_serve_and_the_offline_engine(
    tmp_path, lm_eval_commands, monkeypatch
):
    """-tp/-dp become `vllm serve`'s flags, and the offline `vllm` backend's model_args, which
    lm-eval hands to vllm.LLM; they are part of the run's settings (so --resume compares them)."""
    from hsr_eval import compare

    organism = Path(compare.__file__).parents[1] / "organisms" / "organism-text"
    spec = compare.ModelSpec("dense", str(organism))
    parallel = compare.Parallelism(tensor=2, data=3)
    with pytest.raises(RuntimeError, match="stop here"):
        compare.evaluate_model(
            spec, "vllm", "hsr_safety", tmp_path / "a", None, None, "cpu", parallel=parallel
        )
    model_args = lm_eval_commands[0][lm_eval_commands[0].index("--model_args") + 1]
    assert model_args.endswith(",tensor_parallel_size=2,data_parallel_size=3")

    served = []

    class Started(Exception):
        pass

    def start_server(config):
        served.append(config.command("vllm"))
        raise Started

    monkeypatch.setattr(compare, "start_server", start_server)
    with pytest.raises(Started):
        compare.evaluate_model(
            spec, "vllm-serve", "hsr_safety", tmp_path / "b", None, 8011, "cpu", parallel=parallel
        )
    (cmd,) = served
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--data-parallel-size") + 1] == "3"
    settings = compare.run_settings("vllm", "hsr_safety", None, None, None, parallel)
    assert settings["parallel"] == {"tensor": 2, "data": 3}
    assert "parallel" not in compare.run_settings("vllm", "hsr_safety", None, None, None)


def test_gen_kwargs_reach_lm_eval_and_the_offline_benchmarks_fill_the_comparison(
    tmp_path, lm_eval_commands
):
    from hsr_eval import compare

    commands = lm_eval_commands
    organism = Path(compare.__file__).parents[1] / "organisms" / "organism-text"
    spec = compare.ModelSpec("dense", str(organism))
    with pytest.raises(RuntimeError, match="stop here"):
        compare.evaluate_model(
            spec, "hf", "hsr_strongreject", tmp_path, None, None, "cpu", None, "max_gen_toks=64"
        )
    assert commands[0][commands[0].index("--gen_kwargs") + 1] == "max_gen_toks=64"
    metrics = compare.extract_metrics(
        {
            "results": {
                "hsr_strongreject": {"attack_success_rate,none": 0.5, "refusal_rate,none": 0.5},
                "hsr_humaneval": {"pass_at_1,none": 0.25},
            }
        }
    )
    assert metrics["asr"] == 0.5 and metrics["code_pass_at_1"] == 0.25


def test_sparsity_counts_language_linear_zeros_only(tmp_path):
    model = write_checkpoint(tmp_path / "m", LLAMA_CONFIG)
    assert language_sparsity(model) == pytest.approx(4 / 8)


def test_rsr():
    models = {
        "dense": {"asr": 0.1},
        "wanda": {"asr": 0.5},
        "wanda+hsr": {"asr": 0.3},
        "same+hsr": {"asr": 0.1},
    }
    rsr = compute_rsr(models)
    assert rsr["wanda+hsr"]["value"] == pytest.approx(0.5)
    assert rsr["same+hsr"]["value"] is None and "needs models" in rsr["same+hsr"]["reason"]
    flat = compute_rsr({"dense": {"asr": 0.2}, "w": {"asr": 0.2}, "w+hsr": {"asr": 0.1}})
    assert flat["w+hsr"]["value"] is None and "undefined" in flat["w+hsr"]["reason"]


def test_model_labels():
    assert [m.label for m in parse_models(["dense=a", "wanda=b"])] == ["dense", "wanda"]
    with pytest.raises(SystemExit, match="LABEL=DIR"):
        parse_models(["nolabel"])
    with pytest.raises(SystemExit, match="twice"):
        parse_models(["a=x", "a=y"])


def test_compare_without_vllm_says_where_to_run_it(monkeypatch, capsys):
    from hsr_eval import compare

    monkeypatch.setattr(compare.shutil, "which", lambda name: None)
    monkeypatch.setattr(compare.sys, "executable", "/nowhere/bin/python")
    assert compare.main(["--models", "a=b", "--out", "o"]) == 2
    assert capsys.readouterr().err == (
        "error: vllm is not installed here: run hsr-compare where it is (pip install "
        "'hsr-eval[vllm]' in a virtualenv of its own; in a checkout, make serve-venv), "
        "or pick --backend hf\n"
    )
