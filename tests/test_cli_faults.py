"""`hsr compress` under hostile input: it never loses or changes a byte of its inputs.

After every case: the exit (or error) and its message, the input model's files hashing as before,
and nothing complete-looking left at the output.
"""

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
import torch
from loguru import logger
from safetensors.torch import load_file, save_file

from hsr_plugin.cli import main
from tests.helpers import (
    assert_inputs_untouched,
    folder_digest,
    log_messages,
    one_error_line,
    with_option,
    work_args,
)

REPO = Path(__file__).resolve().parents[1]


_CONTAINS = "error: --output {out} contains the input --model ({model}): replacing it would delete that input; choose a new folder"  # noqa: E501
_INSIDE = "error: --output {out} lies inside the input --model ({model}): the input is never written into; choose a folder outside it"  # noqa: E501


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (lambda w: w["model"], "error: --output {out} is the input --model: choose a new folder"),
        (lambda w: w["root"], _CONTAINS),
        (lambda w: Path("."), _CONTAINS),
        (lambda w: w["model"] / "sub", _INSIDE),
    ],
    ids=["output-is-model", "output-is-parent", "output-is-cwd", "output-inside-model"],
)
def test_outputs_over_or_around_an_input_are_refused(work, where, message):
    out = where(work)
    with pytest.raises(SystemExit) as err:
        main(work_args(work, out, "--overwrite"))
    assert err.value.code == message.format(out=out.resolve(), model=work["model"])
    assert_inputs_untouched(work)
    assert not (work["model"] / "sub").exists()


@pytest.mark.parametrize("field", ["safety", "utility"])
def test_an_output_holding_the_data_files_is_refused(work, tmp_path, field):
    data_dir = tmp_path / "data-home"
    data_dir.mkdir()
    data = Path(shutil.copy(work["data"][field], data_dir))
    args = work_args(work, data_dir, "--overwrite", "--set", f"HSRModifier.{field}_data={data}")
    with pytest.raises(SystemExit) as err:
        main(args)
    label = f"HSRModifier.{field}_data"
    assert err.value.code == _CONTAINS.replace("--model", label).format(out=data_dir, model=data)
    assert data.read_bytes() == work["data"][field].read_bytes()
    assert_inputs_untouched(work)


@pytest.mark.parametrize("field", ["dense_model", "processor"])
def test_an_output_inside_the_dense_model_or_processor_is_refused(work, tmp_path, field):
    source = tmp_path / "source"
    shutil.copytree(work["model"], source)
    before = folder_digest(source)
    args = work_args(work, source / "out", "--set", f"HSRModifier.{field}={source}")
    with pytest.raises(SystemExit) as err:
        main(args)
    label = f"HSRModifier.{field}"
    assert err.value.code == _INSIDE.replace("--model", label).format(
        out=source / "out", model=source
    )
    assert folder_digest(source) == before and not (source / "out").exists()
    assert_inputs_untouched(work)


def test_overwrite_replaces_only_an_earlier_hsr_output(work, tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"not a model")
    with pytest.raises(SystemExit, match="replaces only a folder that `hsr compress` wrote"):
        main(work_args(work, foreign, "--overwrite"))
    assert (foreign / "cat.jpg").read_bytes() == b"not a model"
    assert_inputs_untouched(work)


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


def test_non_finite_dense_weights_are_refused_by_name(work, tmp_path):
    dense = tmp_path / "dense-nan"
    shutil.copytree(work["model"], dense)
    weights = load_file(str(dense / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    weights[key][0, 0] = float("nan")
    save_file(weights, str(dense / "model.safetensors"))
    out = tmp_path / "out"
    extra = ["--set", f"HSRModifier.dense_model={dense}", "--set", "HSRModifier.num_heads=8"]
    with pytest.raises(ValueError, match=r"dense weight of model\.layers\.0\.self_attn\.q_proj"):
        main(work_args(work, out, *extra))
    assert not out.exists()
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
def test_the_real_entry_point_prints_one_line(work):
    hsr = Path(sys.executable).with_name("hsr")
    proc = subprocess.run(
        [str(hsr), *work_args(work, work["model"], "--overwrite")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --output")
    assert "Traceback" not in proc.stderr
    assert_inputs_untouched(work)


# ----------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--model", "no-model/here/x", "error: model path no-model/here/x not found"),
        (
            "--dataset",
            ".",
            "error: --dataset . is a folder: pass one plugin-format .jsonl file, or a dataset "
            "name oneshot knows (e.g. open_platypus)",
        ),
        (
            "--dataset",
            "wanda_hsr.yaml",
            "error: --dataset wanda_hsr.yaml: a local file must be a plugin-format .jsonl (one "
            '{"messages": [...]} conversation a line); other formats go through a dataset name',
        ),
    ],
    ids=["missing-model", "dataset-folder", "dataset-not-jsonl"],
)
def test_bad_paths_get_one_line_and_exit_code_2(work, tmp_path, capsys, flag, value, message):
    from hsr_plugin.cli import run

    assert run(with_option(work_args(work, tmp_path / "out"), flag, value)) == 2
    assert one_error_line(capsys) == message
    assert not (tmp_path / "out").exists()
    assert_inputs_untouched(work)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: [*a, "--pipeline", "bogus"], "invalid choice: 'bogus'"),
        (
            lambda a: a[: a.index("--dataset")] + a[a.index("--dataset") + 2 :],
            "the following arguments are required: --dataset",
        ),
    ],
    ids=["bad-pipeline", "no-dataset"],
)
def test_bad_options_are_refused_before_any_work(work, tmp_path, capsys, edit, message):
    from hsr_plugin.cli import run

    with pytest.raises(SystemExit) as exit_:
        run(edit(work_args(work, tmp_path / "out")))
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert_inputs_untouched(work)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"messages": [{"role": "user", "content": "hi \xff"}]}\n', r"2: not UTF-8 text"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
            b'"content": "ok"}], "image": 123}\n',
            "'image' must be a path",
        ),
    ],
    ids=["not-utf8", "image-not-a-path"],
)
def test_bad_calibration_rows_are_named_by_file_and_line(work, tmp_path, capsys, content, message):
    from hsr_plugin.cli import run

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", '
        b'"content": "b"}]}\n' + content
    )
    assert run(work_args(work, tmp_path / "out", "--set", f"HSRModifier.safety_data={bad}")) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and re.search(message, line), line
    assert_inputs_untouched(work)


def test_a_folder_named_jsonl_and_a_truncated_checkpoint_are_named(work, tmp_path, capsys):
    from hsr_plugin.cli import run

    folder = tmp_path / "calib.jsonl"
    folder.mkdir()
    assert run(work_args(work, tmp_path / "out", "--set", f"HSRModifier.safety_data={folder}")) == 2
    assert f"{folder} is not a file" in one_error_line(capsys)
    broken = tmp_path / "broken"
    shutil.copytree(work["model"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert run(with_option(work_args(work, tmp_path / "out"), "--model", str(broken))) == 2
    line = one_error_line(capsys)
    assert f"{weights}: not a readable safetensors file" in line, line
    assert_inputs_untouched(work)


def test_a_recipe_with_a_yaml_error_is_named(work, tmp_path, capsys):
    from hsr_plugin.cli import run

    recipe = tmp_path / "broken.yaml"
    recipe.write_text("sparsity_stage:\n  sparsity_modifiers:\n    Wanda: [unclosed\n")
    assert run(with_option(work_args(work, tmp_path / "out"), "--recipe", str(recipe))) == 2
    line = one_error_line(capsys)
    assert f"recipe {recipe}: not valid YAML at line" in line, line
    assert_inputs_untouched(work)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"schema_version": 1, "heads": [', "not a valid JSON report"),
        ("[1, 2]", "a report is a JSON object, found list"),
        ('{"schema_version": 2}', "schema_version 2 is not supported"),
        ('{"schema_version": 99}', "schema_version 99 is not supported"),
        ('{"schema_version": 1, "heads": [{"layer": "x"}]}', "'heads' must list"),
    ],
    ids=["truncated", "list", "v2", "v99", "wrong-types"],
)
def test_hsr_report_refuses_bad_reports_in_one_line(tmp_path, capsys, text, message):
    from hsr_plugin.cli import run

    path = tmp_path / "hsr_report.json"
    path.write_text(text)
    assert run(["report", str(path), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert str(path) in line and message in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["in-the-part", "in-the-row"])
def test_content_parts_with_images_are_accepted(model_dirs, tmp_path, where):
    """Hugging Face's VLM chat format, with the tiny LLaVA: the picture in the image part, or in
    the row's `image` field; both render exactly like the plugin's plain format."""
    from hsr_plugin.calibration import load_conversations, load_processor, render_samples
    from integration.bench.tiny_models import write_image

    write_image(tmp_path / "pic.png")
    part = {"type": "image", "image": "pic.png"} if where == "in-the-part" else {"type": "image"}
    row = {
        "messages": [
            {"role": "user", "content": [part, {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
        ]
    }
    if where == "in-the-row":
        row["image"] = "pic.png"
    plain = {
        "messages": [
            {"role": "user", "content": "What is this?"},
            {"role": "assistant", "content": "A red square."},
        ],
        "image": "pic.png",
    }
    (tmp_path / "parts.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "plain.jsonl").write_text(json.dumps(plain) + "\n")
    processor = load_processor(str(model_dirs["llava"]))
    parts = render_samples(load_conversations(str(tmp_path / "parts.jsonl")), processor, 128)[0]
    same = render_samples(load_conversations(str(tmp_path / "plain.jsonl")), processor, 128)[0]
    assert torch.equal(parts.input_ids, same.input_ids)
    assert torch.equal(parts.extra["pixel_values"], same.extra["pixel_values"])
    assert torch.equal(parts.response_mask, same.response_mask)


def test_truncated_responses_are_counted_in_a_warning(model_dirs, calib_files):
    from hsr_plugin.calibration import load_conversations, load_processor, render_samples

    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        conversations = load_conversations(str(calib_files["safety"]))
        render_samples(conversations, load_processor(str(model_dirs["llama"])), 40)
    finally:
        logger.remove(sink)
    warned = [m for m in messages if "longer than max_seq_length=40" in m]
    assert len(warned) == 1 and f"of {len(conversations)} calibration" in warned[0], messages


# ----------------------------------------------------------------------------- faults
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


@pytest.mark.parametrize(
    "code",
    [
        "import hsr_plugin, llmcompressor",  # the plugin first: registered by the import hook
        "import llmcompressor, hsr_plugin",  # llm-compressor first: registered at once
        "import hsr_plugin; from llmcompressor.modifiers.factory import ModifierFactory",
        "from hsr_plugin.ablation import ablate_head; from hsr_plugin.hooks import hooks_mixin\n"
        "hooks_mixin()",
        "import hsr_plugin.neuron_scoring, hsr_plugin.attribution, hsr_plugin.restore\n"
        "import llmcompressor",
        # modules that import llm-compressor themselves, before the modifier exists
        "from hsr_plugin.settings import HSRSettings",
        "from hsr_plugin.recipe_checks import earlier_pruning",
        "from hsr_plugin.restoration_policies import RestorationPolicy",
    ],
    ids=[
        "plugin-first",
        "llmcompressor-first",
        "submodule-first",
        "ablation-first",
        "scoring-first",
        "settings-first",
        "recipe-checks-first",
        "policies-first",
    ],
)
@pytest.mark.subprocess
def test_import_hsr_plugin_registers_hsrmodifier_in_any_order(code):
    check = (
        f"{code}\nfrom llmcompressor.modifiers.factory import ModifierFactory\n"
        "from hsr_plugin.modifier import HSRModifier\n"
        "assert ModifierFactory._registered_registry['HSRModifier'] is HSRModifier\n"
        "print('registered')"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0 and "registered" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.subprocess
def test_help_imports_no_heavy_library():
    hsr = Path(sys.executable).with_name("hsr")
    for args in (["--help"], ["compress", "--help"], ["report", "--help"]):
        proc = subprocess.run([str(hsr), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: hsr"), proc.stderr
        assert "No accelerator" not in proc.stdout + proc.stderr
    code = (
        "import sys, hsr_plugin.cli; print(sorted({'llmcompressor', 'torch'} & set(sys.modules)))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
        == "[]"
    )


def test_non_finite_model_weights_are_refused_by_name(work, tmp_path, capsys):
    from hsr_plugin.cli import run

    broken = tmp_path / "nan-model"
    shutil.copytree(work["model"], broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.layers.1.self_attn.o_proj.weight"][3, 3] = float("inf")
    save_file(weights, str(broken / "model.safetensors"))
    assert run(with_option(work_args(work, tmp_path / "out"), "--model", str(broken))) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "weight of model.layers.1.self_attn.o_proj has 1 non-finite values" in line, line
    assert not (tmp_path / "out").exists()
    assert_inputs_untouched(work)


def test_a_truncated_dense_model_is_named(work, tmp_path, capsys):
    from hsr_plugin.cli import run

    dense = tmp_path / "dense"
    shutil.copytree(work["model"], dense)
    (dense / "model.safetensors").write_bytes((dense / "model.safetensors").read_bytes()[:500])
    args = work_args(work, tmp_path / "out", "--set", f"HSRModifier.dense_model={dense}")
    assert run(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{dense / 'model.safetensors'}: not a readable safetensors file" in line, line
    assert_inputs_untouched(work)


def test_non_finite_ablated_outputs_name_the_head(model_dirs, calib_files):
    from hsr_plugin.architecture import find_attention_blocks
    from hsr_plugin.attribution import score_heads
    from hsr_plugin.calibration import load_conversations, load_processor, render_samples
    from tests.helpers import load_model

    model = load_model(model_dirs["llama"]).eval()
    samples = render_samples(
        load_conversations(str(calib_files["safety"])),
        load_processor(str(model_dirs["llama"])),
        128,
    )
    blocks = find_attention_blocks(model)
    with torch.no_grad():  # an ablation scales by eps = inf: only the ablated passes break
        with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn with head 0 ablated"):
            score_heads(model, blocks, samples, eps=float("inf"), progress=False)


# ----------------------------------------------------------------------------- bugs vs user errors
def _failing_linear_forward(error: BaseException):
    """Patch every Linear's forward to raise `error` once HSR's own scoring starts."""
    original = torch.nn.Linear.forward

    def forward(self, x):
        import traceback

        if any("hsr_plugin" in frame.filename for frame in traceback.extract_stack()):
            raise error
        return original(self, x)

    return forward


@pytest.mark.parametrize(
    ("error", "code", "expect"),
    [
        (RuntimeError("shape mismatch deep inside torch"), 1, "this is a bug"),
        (ValueError("an internal ValueError of a library"), 1, "this is a bug"),
        (torch.OutOfMemoryError("CUDA out of memory"), 3, "out of memory: lower"),
    ],
    ids=["runtime-error", "value-error", "out-of-memory"],
)
def test_an_internal_error_keeps_its_traceback_and_is_called_a_bug(
    work, tmp_path, capsys, monkeypatch, error, code, expect
):
    from hsr_plugin.cli import run

    monkeypatch.setattr(torch.nn.Linear, "forward", _failing_linear_forward(error))
    assert run(work_args(work, tmp_path / "out")) == code
    err = capsys.readouterr().err
    assert expect in err.strip().splitlines()[-1]
    if code == 1:
        assert "Traceback (most recent call last)" in err and str(error) in err
        assert "test_cli_faults.py" in err  # the traceback runs down to the failing forward
    else:  # out of memory: one line of advice, no traceback through the failing forward
        assert "_failing_linear_forward" not in err and "test_cli_faults.py" not in err
    assert not (tmp_path / "out").exists()
    assert_inputs_untouched(work)
