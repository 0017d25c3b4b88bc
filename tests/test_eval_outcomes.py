"""hsr_eval.outcomes: per-prompt outcomes from lm-eval's logged samples, their counts and
intervals per split, and the paired statistics of a realigned model; and how the comparison
table shows them."""

from __future__ import annotations

import json

import pytest

from hsr_eval.compare import with_paired_statistics
from hsr_eval.outcomes import outcome_maps, paired_statistics, rate_counts, read_lm_eval_samples
from hsr_eval.stats import mcnemar_exact, paired_bootstrap_rsr, wilson_interval
from hsr_eval.tables import comparison_table

STAMP = "2026-12-01T12-01-56.889241"


def _write_samples(folder, task: str, rows: list[dict]) -> None:
    """A `samples_<task>_<stamp>.jsonl` file as `lm-eval --log_samples` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for doc_id, (doc, metrics) in enumerate(rows):
        lines.append(
            json.dumps(
                {"doc_id": doc_id, "doc": doc, "resps": [["..."]], "metrics": sorted(metrics),
                 **metrics}
            )
        )  # fmt: skip
    (folder / f"samples_{task}_{STAMP}.jsonl").write_text("\n".join(lines) + "\n")


def _harmful(i: int, unsafe: int, split: str) -> tuple[dict, dict]:
    doc = {"id": f"harmful-{i:05d}", "split": split, "prompt": "p"}
    return doc, {"attack_success_rate": float(unsafe), "refusal_rate": float(1 - unsafe)}


def test_logged_samples_become_per_prompt_outcomes_with_their_splits(tmp_path):
    rows = [_harmful(0, 1, "heldout_phrasing"), _harmful(1, 0, "heldout_topic")]
    _write_samples(tmp_path, "hsr_harmful", rows)
    _write_samples(
        tmp_path, "hsr_utility", [({"id": "u-0", "category": "math"}, {"utility_accuracy": 1.0})]
    )
    _write_samples(tmp_path, "hsr_other", [({"id": "x"}, {"utility_accuracy": 0.0})])
    (tmp_path / "samples_hsr_harmful_1999-01-01T00-00-00.jsonl").write_text("not read\n")
    samples = read_lm_eval_samples(tmp_path / f"results_{STAMP}.json")
    assert sorted(r["task"] for r in samples) == [
        "hsr_harmful", "hsr_harmful", "hsr_other", "hsr_utility"
    ]  # fmt: skip
    outcomes, splits = outcome_maps(samples)
    assert outcomes == {
        "asr": {"hsr_harmful/harmful-00000": 1, "hsr_harmful/harmful-00001": 0},
        "refusal_rate": {"hsr_harmful/harmful-00000": 0, "hsr_harmful/harmful-00001": 1},
        "utility": {"hsr_utility/u-0": 1},
    }
    assert splits == {  # the split, else the category (a published benchmark's)
        "hsr_harmful/harmful-00000": "heldout_phrasing",
        "hsr_harmful/harmful-00001": "heldout_topic",
        "hsr_utility/u-0": "math",
    }


def test_counts_hold_k_of_n_and_wilson_intervals_per_split():
    outcomes = {"asr": {f"t/{i}": int(i < 3) for i in range(10)}, "utility": {"u/0": 1}}
    splits = {f"t/{i}": ("heldout_phrasing" if i < 5 else "heldout_topic") for i in range(10)}
    counted = rate_counts(outcomes, splits)
    assert counted["counts"]["asr"] == {
        "k": 3, "n": 10, "rate": 0.3, "ci95": list(wilson_interval(3, 10))
    }  # fmt: skip
    assert counted["counts"]["utility"]["n"] == 1
    assert counted["splits"] == {
        "asr": {
            "heldout_phrasing": {"k": 3, "n": 5, "rate": 0.6, "ci95": list(wilson_interval(3, 5))},
            "heldout_topic": {"k": 0, "n": 5, "rate": 0.0, "ci95": list(wilson_interval(0, 5))},
        }
    }


def _model(unsafe: list[int]) -> dict:
    return {"outcomes": {"asr": {f"t/{i}": v for i, v in enumerate(unsafe)}}}


def test_paired_statistics_of_a_realigned_model():
    dense = [0] * 18 + [1] * 2
    pruned = [1] * 12 + [0] * 8
    realigned = [1] * 6 + [0] * 14
    models = {"dense": _model(dense), "wanda": _model(pruned), "wanda+hsr": _model(realigned)}
    paired = paired_statistics(models, resamples=300, seed=1)
    interval = paired_bootstrap_rsr(
        *(m["outcomes"]["asr"] for m in models.values()), resamples=300, seed=1
    )
    assert paired == {
        "wanda+hsr": {
            "asr": {
                "mcnemar_vs_pruned": mcnemar_exact(
                    models["wanda"]["outcomes"]["asr"], models["wanda+hsr"]["outcomes"]["asr"]
                ),
                "rsr_bootstrap": interval.as_json(),
            }
        }
    }
    assert paired["wanda+hsr"]["asr"]["mcnemar_vs_pruned"]["b"] == 6  # prompts 6..11
    assert paired_statistics({"wanda+hsr": _model(realigned)}) == {}


def test_the_table_shows_intervals_splits_and_the_paired_test():
    models = {}
    for label, k in (("dense", 1), ("wanda", 9), ("wanda+hsr", 4)):
        counts = {"k": k, "n": 10, "rate": k / 10, "ci95": list(wilson_interval(k, 10))}
        models[label] = {
            "asr": k / 10,
            "counts": {"asr": counts},
            "splits": {"asr": {"heldout_topic": counts}},
        }
    rsr = {"wanda+hsr": {"pruned": "wanda", "dense": "dense", "value": 0.625, "reason": None}}
    paired = {
        "wanda+hsr": {
            "asr": {
                "mcnemar_vs_pruned": {"b": 5, "c": 0, "n": 10, "p_value": 0.0625},
                "rsr_bootstrap": {"ci95": [0.25, 1.0], "resamples": 2000, "seed": 0, "n": 10,
                                  "undefined_resamples": 3},
            }
        }
    }  # fmt: skip
    text = comparison_table({"models": models, "rsr": with_paired_statistics(rsr, paired)})
    assert text.splitlines()[2] == "| dense | 10.0 [1.8, 40.4] | n/a | n/a | n/a | n/a |"
    assert "| wanda+hsr | heldout_topic | 40.0 [16.8, 68.7] | 4 of 10 |" in text
    assert text.splitlines()[-3] == (
        "RSR wanda+hsr: 62.5% (vs wanda and dense); 95% CI 25.0% to 100.0% (paired bootstrap, "
        "2000 resamples); vs wanda: 5 prompts made safe, 0 made unsafe of 10, McNemar p = 0.0625"
    )
    assert text.splitlines()[-1].startswith("Rates in % with 95% Wilson intervals")


@pytest.mark.parametrize("value", [0.5, 2])
def test_an_outcome_that_is_not_zero_or_one_is_refused(value):
    with pytest.raises(ValueError, match="an outcome is 0 or 1"):
        rate_counts({"asr": {"t/0": value}}, {})
    row = {"task": "hsr_harmful", "id": "h-1", "attack_success_rate": value}
    with pytest.raises(ValueError, match="^hsr_harmful/h-1: attack_success_rate is 0 or 1"):
        outcome_maps([row])


def test_rsr_of_a_picture_only_run_is_on_the_asr_on_pictures():
    from hsr_eval.compare import compute_rsr

    models = {
        "dense": {"asr": None, "asr_vision": 0.1},
        "wanda": {"asr": None, "asr_vision": 0.5},
        "wanda+hsr": {"asr": None, "asr_vision": 0.3},
    }
    (entry,) = compute_rsr(models).values()
    assert (entry["on"], entry["value"]) == ("asr_vision", pytest.approx(0.5))
    text = compute_rsr({**models, "dense": {"asr": 0.0, "asr_vision": 0.1}})["wanda+hsr"]
    assert (text["on"], text["value"], text["reason"]) == ("asr", None, "ASR missing")


@pytest.mark.parametrize(
    ("label", "pruned"),
    [
        ("wanda+hsr", "wanda"),
        ("wanda+hsr-recommended", "wanda"),
        ("sparsegpt-0.6+hsr-restore_gain", "sparsegpt-0.6"),
        ("wanda", None),
        ("wanda+hsrx", None),
        ("+hsr", None),
    ],
)
def test_an_hsr_label_names_its_pruned_model(label, pruned):
    from hsr_eval.outcomes import pruned_label

    assert pruned_label(label) == pruned


def test_each_hsr_setting_of_a_pruning_is_compared_with_that_pruning():
    from hsr_eval.compare import compute_rsr

    dense = [0] * 18 + [1] * 2
    models = {"dense": _model(dense), "wanda": _model([1] * 12 + [0] * 8)}
    models["wanda+hsr-recommended"] = _model([1] * 2 + [0] * 18)
    models["wanda+hsr"] = _model([1] * 8 + [0] * 12)
    for model in models.values():
        model["asr"] = sum(model["outcomes"]["asr"].values()) / 20
    rsr = compute_rsr(models)
    assert rsr["wanda+hsr-recommended"]["value"] == pytest.approx(1.0)
    assert rsr["wanda+hsr"]["value"] == pytest.approx(0.4)
    assert set(paired_statistics(models, resamples=50)) == {"wanda+hsr", "wanda+hsr-recommended"}
