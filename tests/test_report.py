"""hsr_plugin.report: the report's exact content, its totals and its log summary."""

from __future__ import annotations

from tests.helpers import log_messages


def test_build_report_is_exact():
    from hsr_plugin.report import SCHEMA_VERSION, SPARSEGPT_NOTE, build_report
    from hsr_plugin.score_records import HeadScore

    scores = [HeadScore(1, 0, 0, 0.5), HeadScore(0, 1, 0, 0.5), HeadScore(0, 0, 0, 0.9)]
    rows = [
        {"module": "a", "restored": 3, "pruned_in_slice": 9, "candidates": 4, "unit": "heads"},
        {"module": "b", "restored": 2, "pruned_in_slice": 5, "candidates": 2, "unit": "mlp"},
        {"module": "c", "restored": 1, "pruned_in_slice": 2, "candidates": 1},  # heads by default
    ]
    report = build_report(
        config={"head_score": "reference"},
        model={"name": "m"},
        pruned_by=["SparseGPTModifier"],
        head_scores=scores,
        selected=[(0, 0)],
        rows=rows,
        language_params=20000,
        pruned_params=0,
        timing={"restore": 0.123456},
        mlp_selected=[(1, 7, 0.25)],
    )
    assert report == {
        "schema_version": SCHEMA_VERSION,
        "config": {"head_score": "reference"},
        "model": {"name": "m"},
        "pruned_by": ["SparseGPTModifier"],
        "heads": [  # by score, ties by layer then head
            {"layer": 0, "head": 0, "kv_group": 0, "score": 0.9},
            {"layer": 0, "head": 1, "kv_group": 0, "score": 0.5},
            {"layer": 1, "head": 0, "kv_group": 0, "score": 0.5},
        ],
        "selected_heads": [[0, 0]],
        "restored": rows,
        "selected_mlp_channels": [{"layer": 1, "channel": 7, "score": 0.25}],
        "totals": {
            "restored": 6,
            "restored_in_heads": 4,
            "restored_in_mlp": 2,
            "language_params": 20000,
            "pruned_params": 0,
            "restored_per_10k_params": 3.0,
            "restored_per_10k_pruned": 0.0,
        },
        "timing_s": {"restore": 0.1235},
        "scoring": {},
        "notes": [
            SPARSEGPT_NOTE,
            "reference head score: one score per KV group, reported as head index g",
        ],
    }
    plain = build_report(
        config={"head_score": "ships_kl"},
        model={},
        pruned_by=["WandaPruningModifier"],
        head_scores=scores,
        selected=[],
        rows=[],
        language_params=0,
        pruned_params=10,
        timing={},
        scoring={"device": "cpu"},
    )
    assert plain["notes"] == [] and plain["scoring"] == {"device": "cpu"}
    assert plain["totals"]["restored_per_10k_params"] == 0.0


def test_totals_per_ten_thousand():
    from hsr_plugin.report import totals

    rows = [{"restored": 3}, {"restored": 2, "unit": "mlp"}]
    assert totals(rows, 50000, 1000) == {
        "restored": 5,
        "restored_in_heads": 3,
        "restored_in_mlp": 2,
        "language_params": 50000,
        "pruned_params": 1000,
        "restored_per_10k_params": 1.0,
        "restored_per_10k_pruned": 50.0,
    }


def test_log_summary_is_exact():

    from hsr_plugin.report import log_summary

    report = {
        "config": {"head_score": "ships_kl", "neuron_score": "wanda", "head_slicing": "exact"},
        "heads": [{"layer": 1, "head": h, "score": 1.0 / (h + 1)} for h in range(6)],
        "selected_heads": [[1, 0], [1, 1]],
        "totals": {
            "restored": 1234,
            "pruned_params": 56789,
            "restored_per_10k_params": 0.5,
            "restored_per_10k_pruned": 217.3,
            "restored_in_mlp": 1000,
            "restored_in_heads": 234,
        },
        "timing_s": {"head_scoring": 1.25, "restore": 0.04},
        "selected_mlp_channels": [{"layer": 0, "channel": 3, "score": 1.0}],
        "scoring": {
            "device": "cpu",
            "placement": "no accelerator is available",
            "head_scoring_forward_equivalents": 4.5,
            "budget": 2000,
        },
        "notes": ["n1"],
    }
    with log_messages() as messages:
        log_summary(report)
        log_summary({**report, "selected_mlp_channels": [], "scoring": {}, "notes": []})
    assert messages[0] == (
        "HSR summary\n"
        "  head score ships_kl | neuron score wanda | slicing exact\n"
        "  top heads: L1H0=1, L1H1=0.5, L1H2=0.3333, L1H3=0.25, L1H4=0.2\n"
        "  selected (2): L1H0, L1H1\n"
        "  restored 1,234 weights of 56,789 pruned (0.5000 per 10k params, 217.3000 per 10k "
        "pruned)\n"
        "  MLP channels (1): 1,000 restored there, 234 in the heads\n"
        "  timing: head_scoring 1.2s, restore 0.0s\n"
        "  scored on cpu (no accelerator is available), head scoring 4.5 forward-pass "
        "equivalents, budget 2,000\n"
        "  note: n1"
    )
    assert messages[1] == "\n".join(messages[0].splitlines()[:5] + messages[0].splitlines()[6:7])
