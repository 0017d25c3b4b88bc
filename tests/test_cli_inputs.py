"""hsr_plugin.cli.inputs: what `hsr compress` and `hsr sweep` check before any work. The user's
files are never written into, over or above, and a bad path, option or row is one line.

After every case: the exit (or error) and its message, the input model's files hashing as
before, and nothing complete-looking left at the output."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsr_plugin import cli
from hsr_plugin.cli import main
from hsr_plugin.cli.inputs import check_hsr_entries, dataset_kwargs
from tests.helpers import (
    assert_inputs_untouched,
    compress_args,
    compress_tiny,
    folder_digest,
    one_error_line,
    sample_report,
    with_option,
    work_args,
)

REPO = Path(__file__).resolve().parents[1]
_CONTAINS = "error: --output {out} contains the input --model ({model}): replacing it would delete that input; choose a new folder"  # noqa: E501
_INSIDE = "error: --output {out} lies inside the input --model ({model}): the input is never written into; choose a folder outside it"  # noqa: E501


def test_compress_rejects_a_folder_that_is_not_a_model(tmp_path, calib_files, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit, match="holds no config.json"):
        compress_tiny(tmp_path, tmp_path / "out", calib_files)


def test_calibration_specs_with_a_split_are_checked_before_any_work(tmp_path):
    (tmp_path / "train.json").write_text("[]")
    recipe = {
        "hsr_stage": {
            "hsr_modifiers": {
                "HSRModifier": {"safety_data": f"{tmp_path / 'train.json'}:bogus", "num_heads": 2}
            }
        }
    }
    with pytest.raises(ValueError, match="VLGuard split must be one of"):
        check_hsr_entries(recipe)


def test_the_pruning_calibration_rows_follow_the_seed(model_dirs, calib_files):
    def rows(seed):
        args = cli.build_parser().parse_args(
            ["compress", "--model", str(model_dirs["llama"]), "--recipe", "r", "--output", "o",
             "--dataset", str(calib_files["utility"]), "--num-samples", "2", "--seed", str(seed)]
        )  # fmt: skip
        return [row["input_ids"] for row in dataset_kwargs(args)["dataset"]]

    assert rows(0) == rows(0) and len(rows(0)) == 2
    args = cli.build_parser().parse_args(
        ["compress", "--model", str(model_dirs["llama"]), "--recipe", "r", "--output", "o",
         "--dataset", str(calib_files["utility"])]
    )  # fmt: skip
    kwargs = dataset_kwargs(args)
    assert sorted(kwargs) == ["batch_size", "data_collator", "dataset", "num_calibration_samples"]
    (first, *_) = kwargs["dataset"]
    assert sorted(first) == ["attention_mask", "input_ids"]
    assert first["attention_mask"] == [[1] * len(first["input_ids"][0])]
    assert kwargs["batch_size"] == 1 and kwargs["num_calibration_samples"] == 6
    assert any(rows(0) != rows(seed) for seed in (1, 2, 3))
    assert dataset_kwargs(SimpleNamespace(dataset="open_platypus")) == {"dataset": "open_platypus"}


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


def test_an_output_holding_a_vlguard_file_named_with_its_split_is_refused(
    model_dirs, calib_files, tmp_path
):
    from hsr_plugin.cli import main

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
