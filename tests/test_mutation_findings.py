"""Behaviour a mutation sample (seed 2) found unpinned: first-order bookkeeping, float edge
cases of the reference angle, the Hessian's precision, dispatch states, figure details, and what
the sweep hands its scorer."""

from __future__ import annotations

import json

import pytest
import torch

from hsr_plugin.calibration import CalibrationSample
from hsr_plugin.hooks import hooks_mixin
from tests.helpers import (
    adds_bos,
    log_messages,
    response_samples,
    sample_comparison,
    sample_report,
    tiny_llama,
)


def _no_response_sample() -> CalibrationSample:
    ids = torch.tensor([[1, 2, 3]])
    response = torch.tensor([[True, False, False]])  # only position 0: never a predicted token
    return CalibrationSample(ids, torch.ones_like(ids), response, 0)


def test_first_order_scores_skip_batches_without_response_tokens_and_need_some():
    from hsr_plugin.attribution import first_order_unit_scores

    model = tiny_llama(layers=1).eval()
    o_proj = model.model.layers[0].self_attn.o_proj
    args = (torch.device("cpu"), hooks_mixin()())
    skipped = first_order_unit_scores(
        model, {"o": (o_proj, 2, 8)}, [_no_response_sample(), *response_samples(1)], 1, 0, *args,
        progress=False,
    )  # fmt: skip
    alone = first_order_unit_scores(
        model, {"o": (o_proj, 2, 8)}, response_samples(1), 1, 0, *args, progress=False
    )
    assert torch.equal(skipped["o"], alone["o"]) and bool((alone["o"] != 0).any())
    with pytest.raises(ValueError) as err:
        first_order_unit_scores(
            model, {"o": (o_proj, 2, 8)}, [_no_response_sample()], 1, 0, *args, progress=False,
            what="MLP channel scores",
        )  # fmt: skip
    assert str(err.value) == "HSR MLP channel scores: no response token in the calibration data"


def test_the_reference_angle_of_opposite_vectors_is_180_degrees_despite_rounding():
    from hsr_plugin.head_scores import reference_angle_score

    # with these values a @ -a / (|a| |a|) rounds to -1.0000000000000002, outside acos' domain
    v = torch.tensor([1.4565026067903366, 0.9398099079535257, 0.7748488177844168,
                      0.19186942747902466, 1.2637947253235853, -1.29043510317847,
                      -0.7911026902762878], dtype=torch.float64)  # fmt: skip
    dense = torch.stack([v, v], dim=1)
    assert reference_angle_score(dense, -dense) == pytest.approx(180.0)
    assert reference_angle_score(dense, dense) == pytest.approx(0.0, abs=1e-6)


def test_the_hessian_multiplies_in_float32_whatever_the_input_dtype():
    from hsr_plugin.importance import HessianAccumulator

    torch.manual_seed(0)
    x = torch.randn(5, 6).to(torch.bfloat16)
    acc = HessianAccumulator(6)
    acc.update(x)
    expected = x.float().T @ x.float() * (2.0 / 5)
    assert acc.hessian().dtype == torch.float32
    assert torch.equal(acc.hessian(), expected)


def test_the_dispatch_state_of_a_plain_cpu_module():
    from hsr_plugin.placement import dispatch_state

    # modules without tensors (activations, containers) fall back to the CPU quietly
    with log_messages("WARNING") as warnings:
        relu_state = dispatch_state(torch.nn.Sequential(torch.nn.ReLU()))
    assert warnings == [] and relu_state["0"] == (False, "cpu", "cpu", False, ())

    layer = torch.nn.Linear(2, 3)
    state = dispatch_state(torch.nn.Sequential(layer))
    weight, bias = layer.weight, layer.bias
    assert state["0"] == (
        False,
        "cpu",
        "cpu",
        False,
        (
            ("bias", (id(bias), "cpu", torch.float32)),
            ("weight", (id(weight), "cpu", torch.float32)),
        ),
    )


def test_figure_details_a_user_sees(tmp_path):
    from hsr_plugin.plots import head_scores_figure, safety_bars_figure

    report = sample_report()
    del report["config"]
    fig = head_scores_figure(report)
    ax, bar = fig.axes
    assert ax.get_aspect() == "auto" and bar.get_ylabel() == "head score (score)"
    for ax in safety_bars_figure(sample_comparison()).axes:
        for rect, label in zip(ax.patches, ax.texts, strict=True):
            assert label.xy == (rect.get_x() + rect.get_width() / 2, rect.get_height())


def test_small_cli_and_source_messages(tmp_path, model_dirs):
    from hsr_plugin import cli
    from hsr_plugin.cli.inputs import looks_local
    from hsr_plugin.dense_source import SafetensorsDenseSource
    from hsr_plugin.recipe_overrides import parse_override

    for name, local in [("./model", True), ("~/m", True), ("/abs/m", True), ("a/b/c", True),
                        ("model", True), ("org/name", False)]:  # fmt: skip
        assert looks_local(name) is local, name
    report = tmp_path / "r.json"

    report.write_text(json.dumps(sample_report()))
    (tmp_path / "c.json").write_text(json.dumps({"models": []}))
    with pytest.raises(SystemExit) as err:
        cli.main(["report", str(report), "--comparison", str(tmp_path / "c.json")])
    assert err.value.code == f"error: {tmp_path / 'c.json'}: a comparison has a 'models' mapping"
    source = SafetensorsDenseSource(model_dirs["llama"])
    with pytest.raises(KeyError) as err:
        source.key_for("model.nothing")
    assert err.value.args[0] == (
        f"dense_model {model_dirs['llama']} has no weight for model.nothing (tried "
        "model.nothing.weight, nothing.weight, language_model.model.nothing.weight, "
        "model.language_model.nothing.weight)"
    )
    with pytest.raises(ValueError) as err:
        parse_override("num_heads=4")
    assert str(err.value) == (
        "override 'num_heads=4' must look like Modifier.field=value, for example "
        "HSRModifier.num_heads=4"
    )


def test_the_judge_line_needs_only_the_judge():
    from hsr_eval.tables import comparison_table

    text = comparison_table({"models": {"m": {"asr": 0.5, "judge": "refusal-prefix"}}})
    assert text.endswith("RSR: n/a\n\nJudge: refusal-prefix; backend: None.")


def test_encode_conversation_names_its_source_and_adds_no_second_bos():
    from hsr_plugin.calibration import encode_conversation
    from integration.bench.tiny_models import build_tokenizer

    messages = [{"role": "user", "content": "how are you"}, {"role": "assistant", "content": "ok"}]
    tokenizer = adds_bos(build_tokenizer())
    ids, n_prompt = encode_conversation(tokenizer, messages)
    bos = tokenizer.convert_tokens_to_ids("<s>")
    assert ids[0] == bos and ids[1] != bos and 0 < n_prompt < len(ids)
    unstable = build_tokenizer(
        template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}?{% endif %}"
    )
    with pytest.raises(ValueError, match=r"^conversation: the chat template is not prefix-stable"):
        encode_conversation(unstable, messages)


def test_the_sweep_hands_its_scorer_the_eval_folder_limit_and_label(
    model_dirs, calib_files, tmp_path, monkeypatch
):
    import hsr_plugin.sweep as sweep
    from hsr_eval.tasks.in_process import TEXT_TASKS, VISION_TASKS
    from integration.organisms.registry import ORGANISMS
    from tests.helpers import HSR, WANDA

    class Scored(Exception):
        pass

    def score_model(model, processor, tasks, metadata, limit, desc):
        raise Scored(tasks, metadata, limit, desc)

    monkeypatch.setattr(sweep, "default_scorer", lambda: (score_model, TEXT_TASKS, VISION_TASKS))
    import yaml

    recipe = yaml.safe_load(
        WANDA.format(structure="0:0")
        + HSR.format(
            num_heads=1, safety=calib_files["safety"], utility=calib_files["utility"], extra=""
        )  # fmt: skip
    )
    from hsr_plugin.calibration import load_processor
    from hsr_plugin.oneshot_data import calibration_kwargs

    data = calibration_kwargs(
        str(calib_files["utility"]), load_processor(str(model_dirs["llama"])), 6, 128
    )
    eval_data = ORGANISMS["text"].data_dir
    with pytest.raises(Scored) as scored:
        sweep.run_sweep(str(model_dirs["llama"]), recipe, {"num_heads": [1]}, data,
                        tmp_path / "o", eval_data, eval_limit=4)  # fmt: skip
    assert scored.value.args == (TEXT_TASKS, {"data_dir": str(eval_data)}, 4, "dense")


def test_the_sweep_loads_models_in_float32_without_an_accelerator(model_dirs, tmp_path):
    import hsr_plugin.sweep as sweep
    from hsr_plugin.models import load_model

    half = tmp_path / "bf16"
    load_model(model_dirs["llama"]).to(torch.bfloat16).save_pretrained(half)
    assert load_model(half).dtype == torch.bfloat16  # "auto": the checkpoint's own dtype
    if not torch.accelerator.is_available():
        assert sweep.load_sweep_model(str(half)).dtype == torch.float32


def test_main_reads_sys_argv_and_refuses_unknown_arguments(tmp_path, monkeypatch, capsys):
    import sys

    from hsr_plugin import cli

    missing = tmp_path / "missing.json"
    monkeypatch.setattr(sys, "argv", ["hsr", "report", str(missing)])
    with pytest.raises(SystemExit) as err:
        cli.main()
    assert err.value.code == f"error: report {missing} does not exist"
    with pytest.raises(SystemExit):
        cli.main(["report", str(missing), "--bogus", "x"])
    assert capsys.readouterr().err.endswith("hsr: error: unrecognized arguments: --bogus x\n")


def test_figures_are_saved_at_120_dpi(tmp_path):
    from PIL import Image

    from hsr_plugin.plots import plot_head_scores

    with Image.open(plot_head_scores(sample_report(), tmp_path / "h.png")) as image:
        assert image.size == (480, 360)  # 4 x 3 inches


def test_an_output_holding_a_vlguard_file_named_with_its_split_is_refused(
    model_dirs, calib_files, tmp_path
):
    from hsr_plugin.cli import main
    from tests.helpers import compress_args

    data = tmp_path / "vlguard"
    data.mkdir()
    (data / "train.json").write_text("[]")
    args = compress_args(model_dirs["llama"], "recipes/wanda_hsr.yaml", data,
                         calib_files["utility"], f"{data / 'train.json'}:unsafes",
                         calib_files["utility"])  # fmt: skip
    with pytest.raises(SystemExit) as err:
        main([*args, "--overwrite"])
    assert err.value.code.startswith(
        f"error: --output {data} contains the input HSRModifier.safety_data ({data / 'train.json'})"
    )


def test_the_recipe_order_check_names_what_it_found(monkeypatch):
    from types import SimpleNamespace

    import hsr_plugin.recipe_checks as modifier_module
    from hsr_plugin import HSRModifier
    from hsr_plugin.recipe_checks import earlier_pruning

    hsr = HSRModifier()

    class Other:
        pass

    def session(recipe):
        return lambda: SimpleNamespace(lifecycle=SimpleNamespace(recipe=recipe))

    monkeypatch.setattr(
        modifier_module, "active_session", session(SimpleNamespace(modifiers=[Other(), hsr]))
    )
    with pytest.raises(ValueError) as err:
        earlier_pruning(hsr)
    assert str(err.value) == (
        "HSRModifier needs a pruning modifier before it in the recipe (found Other). Put HSR "
        "after the sparsity stage (e.g. WandaPruningModifier or SparseGPTModifier) and before "
        "quantization."
    )
    monkeypatch.setattr(modifier_module, "active_session", session(SimpleNamespace()))
    with pytest.raises(ValueError, match=r"\(found nothing\)"):
        earlier_pruning(hsr)


def test_the_model_path_prefers_the_models_own_name():
    from types import SimpleNamespace

    from hsr_plugin.models import model_name_or_path

    config = SimpleNamespace(_name_or_path="from-config")
    assert model_name_or_path(SimpleNamespace(name_or_path="own", config=config)) == "own"
    assert model_name_or_path(SimpleNamespace(name_or_path="", config=config)) == "from-config"
    assert model_name_or_path(SimpleNamespace(config=SimpleNamespace())) == ""


def test_the_subspace_rank_reaches_the_head_scores():
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.attribution import score_heads

    torch.manual_seed(0)
    model = tiny_llama(layers=1).eval()
    blocks = find_attention_blocks(model)
    scores = {
        rank: [s.score for s in score_heads(model, blocks, response_samples(4), "ships_subspace",
                                             subspace_rank=rank, progress=False)]
        for rank in (1, 2)
    }  # fmt: skip
    assert scores[1] != scores[2]


@pytest.mark.parametrize(
    "method, label",
    [("ships_kl", "HSR head scores (ships_kl)"), ("attribution", "HSR head scores (first order)")],
)
def test_head_scoring_bars_count_every_unit(capsys, method, label):
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.attribution import score_heads

    model = tiny_llama(layers=1).eval()
    score_heads(model, find_attention_blocks(model), response_samples(3), method, progress=True)
    bar = capsys.readouterr().err
    assert label in bar
    if method == "ships_kl":
        assert "2/2" in bar  # one batch x 2 heads
