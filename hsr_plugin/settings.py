"""HSRModifier's settings: its pydantic fields with their validation, and the stages the fields
choose (a head scorer, a restoration policy). `HSRModifier` (`hsr_plugin.modifier`) adds the
lifecycle; every field is documented here and in integration/docs/fields.md."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from llmcompressor.modifiers import Modifier
from pydantic import Field, field_validator, model_validator

from hsr_eval.language_weights import VISION_IGNORE
from hsr_plugin.errors import InvalidInputError
from hsr_plugin.exact_head_scores import AdaptiveStop
from hsr_plugin.head_score_stages import HeadScorer, head_scorer
from hsr_plugin.restoration_policies import (
    ImportanceRestoration,
    RestorationPolicy,
    RestoreGainRestoration,
)
from hsr_plugin.restore import parse_nm
from hsr_plugin.score_records import HeadScore

__all__ = ["DEFAULT_IGNORE", "HSRSettings"]

# lm_head, and every vision tower and projector (the one list:
# hsr_eval.language_weights.VISION_PATTERNS)
DEFAULT_IGNORE = ["re:.*lm_head", *VISION_IGNORE]


class HSRSettings(Modifier):
    """
    The fields of `HSRModifier` (every one a recipe entry), validated together: a value that
    the chosen mode ignores is an error naming the mode.

    :param num_heads: top-h heads to realign, ranked over all layers (paper: 10 or 4)
    :param head_score: `ships_subspace` (principal angles of last-token states, the paper's
        dataset-level Ships), `ships_kl` (mean next-token KL), `reference` (the authors'
        code: angle on hidden feature 0, one score per KV group), or `attribution`
        (experimental, opt-in: the first-order change of the refusal NLL when a head's output
        is zeroed; one forward and one backward pass per batch instead of one pass per head)
    :param subspace_rank: r, the rank of the subspaces compared by `ships_subspace`
    :param head_rerun: what an ablating head score re-runs after the ablated head's layer:
        `all_positions` (exact Ships, the default) or `last_position` (opt-in, beyond the
        paper: only the last prompt position, which Ships reads, against the intact pass's
        keys and values of the other positions; about 1/T of the work for T-token prompts, and
        exact for heads of the last layer) or `screened` (opt-in, beyond the paper: the last
        position screens every head, then the top `head_screen_factor` x `num_heads` are
        re-scored exactly, and the top `num_heads` are chosen among them by exact Ships)
    :param head_screen_factor: `head_rerun: screened` only: how many heads, per head selected,
        the exact re-run verifies
    :param head_prompts: how many of the safety prompts an ablating head score reads: `all`
        (the default) or `adaptive` (opt-in, beyond the paper: score batch by batch and stop
        once the top `num_heads` set has not moved for `head_stable_rounds` rounds in a
        row, a round being `batch_size` more prompts, read in an order drawn with `seed`;
        single process only)
    :param head_stable_rounds: `head_prompts: adaptive` only: k, the rounds in a row the top
        set must not move before the scoring stops
    :param ablation_eps: factor that ablates a head's query and output
    :param neuron_score: weight importance on the dense model: `wanda`, `sparsegpt` or `snip`
        (the paper's neuron level); or `restore_gain` (opt-in, beyond the paper): after
        pruning, rank the pruned weights of the selected units by the first-order drop of the
        refusal NLL their restoration brings on the pruned model, dropping those that would
        raise the utility NLL by more than `utility_tolerance`; `safety_top`, `utility_top` and
        `utility_max` do not apply to it
    :param safety_top: q, the top fraction of weights by safety importance
    :param utility_top: p, weights in the top-p by utility importance are excluded
    :param utility_max: p_max, candidates must lie in the top-p_max by utility importance
    :param head_slicing: `exact` (each head's own rows/columns) or `reference` (the authors'
        input-column bands for q/k/v and the whole o_proj)
    :param safety_data: harmful requests with refusals: a bundled set name, a local JSONL or
        VLGuard `train.json[:split]` path, or a Hugging Face dataset id (`id[:split]`)
    :param utility_data: benign requests with helpful answers, same forms
    :param benign_data: `restore_gain` only, optional: benign requests worded like harmful
        ones, each with the refusal it must NOT get (same forms; bundled: `hsr-benign-mini`).
        A candidate must still lower the refusal NLL and must keep a positive gain net of what
        restoring it brings to refusing these, which then ranks it: the restoration stops
        buying refusals with over-refusal
    :param benign_weight: how much a unit of benign look-alike refusal gain costs against a
        unit of safety gain (with `benign_data`)
    :param benign_stop_margin: with `benign_data`, optional (beyond the paper): restore the
        ranking in steps, measuring the mean refusal NLL of the benign look-alike requests after
        each, and stop before it falls more than this many nats below the dense model's: the
        restoration keeps the longest prefix of its ranking that leaves those requests no more
        refusable than the dense model left them (0: not at all more); at most 11 extra
        forward passes over `benign_data` per round, and 1 on the dense model
    :param num_samples: samples drawn from each set (seeded)
    :param max_seq_length: longest rendered conversation, in tokens
    :param batch_size: prompts (or conversations) per forward pass of head attribution and of
        the Wanda/SparseGPT statistics (text only; samples with images run one at a time)
    :param attribution_memory_gb: activation memory one exact attribution pass may use, which
        sets how many ablated heads share a pass; default: a quarter of the accelerator's free
        memory, or 128 MiB on the CPU
    :param offload_statistics: accumulate the Wanda/SparseGPT/SNIP statistics on the CPU
        instead of the execution device (for very large layers, like SparseGPT's
        `offload_hessians`)
    :param seed: seed for sampling the calibration sets
    :param targets: modules (decoder layers) whose self-attention may be realigned
    :param ignore: modules never touched (vision tower, projector, lm_head by default)
    :param dense_model: optional local checkpoint of the dense model to read dense weights
        from (safetensors, lazily) instead of snapshotting them before pruning
    :param processor: processor or tokenizer path; default: the model's own path
    :param report_path: where to write the JSON report (always kept as `modifier.report`)
    :param preserve_nm: e.g. '2:4': drop restorations that would break that N:M pattern
    :param max_restored_per_10k: a budget: restore at most this many weights per 10,000
        language parameters, the ones with the highest safety importance first (ties: module
        order, then position); with it, two settings compare at the same restored count
    :param units: what is realigned: `['heads']` (the paper) or `['heads', 'mlp']` (opt-in: also
        the top MLP intermediate channels, ranked by first-order attribution on the safety
        prompts; rows of gate/up and columns of down)
    :param num_mlp_channels: MLP channels realigned with `units: ['heads', 'mlp']`, ranked over
        all targeted layers
    :param utility_tolerance: `restore_gain` only: the largest first-order rise of the utility
        NLL a restored weight may cause
    :param rounds: `restore_gain` only: spend the budget in this many chunks, re-scoring the
        gradients after each (greedy); needs `max_restored_per_10k`
    :param distributed_timeout_s: under torchrun, how long one of HSR's collectives waits for
        the other ranks before the run fails (they all wait for the slowest rank's share of
        the scoring)
    """

    num_heads: int = Field(default=10, ge=1)
    head_score: Literal["ships_subspace", "ships_kl", "reference", "attribution"] = "ships_subspace"
    subspace_rank: int = Field(default=1, ge=1)
    head_rerun: Literal["all_positions", "last_position", "screened"] = "all_positions"
    head_screen_factor: int = Field(default=3, ge=1)
    head_prompts: Literal["all", "adaptive"] = "all"
    head_stable_rounds: int = Field(default=3, ge=1)
    ablation_eps: float = Field(default=1e-5, gt=0.0, lt=1.0)
    neuron_score: Literal["wanda", "sparsegpt", "snip", "restore_gain"] = "wanda"
    safety_top: float = Field(default=0.5, gt=0.0, le=1.0)
    utility_top: float = Field(default=0.5, ge=0.0, le=1.0)
    utility_max: float = Field(default=0.7, ge=0.0, le=1.0)
    head_slicing: Literal["exact", "reference"] = "exact"
    safety_data: str = "hsr-safety-mini"
    utility_data: str = "hsr-utility-mini"
    benign_data: str | None = None
    benign_weight: float = Field(default=1.0, ge=0.0)
    benign_stop_margin: float | None = Field(default=None, ge=0.0)
    num_samples: int = Field(default=128, ge=1)
    max_seq_length: int = Field(default=512, ge=8)
    batch_size: int = Field(default=8, ge=1)
    attribution_memory_gb: float | None = Field(default=None, gt=0.0)
    offload_statistics: bool = False
    seed: int = 0
    targets: str | list[str] = Field(default_factory=lambda: [r"re:.*layers\.\d+$"])
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE))
    dense_model: str | None = None
    processor: str | None = None
    report_path: str | None = None
    preserve_nm: str | None = None
    max_restored_per_10k: float | None = Field(default=None, ge=0.0)
    units: list[Literal["heads", "mlp"]] = Field(default_factory=lambda: ["heads"])
    num_mlp_channels: int = Field(default=64, ge=1)
    utility_tolerance: float = Field(default=0.0, ge=0.0)
    rounds: int = Field(default=1, ge=1)
    distributed_timeout_s: float = Field(default=1800.0, gt=0.0)

    # `hsr sweep`'s head-score reuse (documented input, never part of a recipe): the head scores
    # of an earlier run on the same dense model whose SCORING_FIELDS were equal
    reuse_head_scores: list[HeadScore] | None = Field(default=None, exclude=True, repr=False)

    # the fields that decide the head scores: equal values, equal scores (same dense model)
    SCORING_FIELDS: ClassVar[tuple[str, ...]] = (
        "head_score",
        "subspace_rank",
        "head_rerun",
        "head_screen_factor",
        "head_prompts",
        "head_stable_rounds",
        "ablation_eps",
        "safety_data",
        "num_samples",
        "max_seq_length",
        "batch_size",
        "seed",
        "targets",
        "ignore",
        "processor",
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _listify_targets(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("preserve_nm")
    @classmethod
    def _check_nm(cls, value):
        parse_nm(value)
        return value

    @field_validator("safety_data", "utility_data", "benign_data")
    @classmethod
    def _non_empty(cls, value: str | None, info):
        if value is None and info.field_name == "benign_data":
            return value
        if not value or not value.strip():
            raise InvalidInputError(
                "calibration data must name a bundled set, a path or a dataset id"
            )
        return value

    @field_validator("units")
    @classmethod
    def _check_units(cls, value):
        if "heads" not in value:
            raise InvalidInputError("units must include 'heads': ['heads'] or ['heads', 'mlp']")
        return list(dict.fromkeys(value))

    # field -> (the mode that uses it, a test of whether the chosen settings are that mode)
    MODE_FIELDS: ClassVar[dict[str, tuple[str, Any]]] = {
        "subspace_rank": ("head_score: ships_subspace", lambda m: m.head_score == "ships_subspace"),
        "ablation_eps": (
            "an ablating head score (ships_subspace, ships_kl, reference)",
            lambda m: m.head_score != "attribution",
        ),
        "head_rerun": (
            "an ablating head score (ships_subspace, ships_kl, reference)",
            lambda m: m.head_score != "attribution",
        ),
        "head_prompts": (
            "an ablating head score (ships_subspace, ships_kl, reference)",
            lambda m: m.head_score != "attribution",
        ),
        "head_stable_rounds": ("head_prompts: adaptive", lambda m: m.head_prompts == "adaptive"),
        "head_screen_factor": ("head_rerun: screened", lambda m: m.head_rerun == "screened"),
        "safety_top": ("the paper's neuron level", lambda m: m.neuron_score != "restore_gain"),
        "utility_top": ("the paper's neuron level", lambda m: m.neuron_score != "restore_gain"),
        "utility_max": ("the paper's neuron level", lambda m: m.neuron_score != "restore_gain"),
        "utility_tolerance": (
            "neuron_score: restore_gain",
            lambda m: m.neuron_score == "restore_gain",
        ),
        "num_mlp_channels": ("units: [heads, mlp]", lambda m: "mlp" in m.units),
        "benign_data": ("neuron_score: restore_gain", lambda m: m.neuron_score == "restore_gain"),
        "benign_weight": ("benign_data", lambda m: m.benign_data is not None),
        "benign_stop_margin": ("benign_data", lambda m: m.benign_data is not None),
    }

    @model_validator(mode="after")
    def _check_fields_mean_something(self):
        for name, (mode, applies) in self.MODE_FIELDS.items():
            default = type(self).model_fields[name].default
            if getattr(self, name) != default and not applies(self):
                raise InvalidInputError(
                    f"{name}={getattr(self, name)!r} has no effect here: only {mode} uses it "
                    f"(head_score={self.head_score}, neuron_score={self.neuron_score}, "
                    f"units={self.units}); remove it or choose that mode"
                )
        return self

    @model_validator(mode="after")
    def _check_rounds(self):
        if self.rounds > 1 and (
            self.neuron_score != "restore_gain" or self.max_restored_per_10k is None
        ):
            raise InvalidInputError(
                f"rounds={self.rounds} re-scores between chunks of the budget: it needs "
                "neuron_score: restore_gain and max_restored_per_10k"
            )
        return self

    @model_validator(mode="after")
    def _check_fractions(self):
        if self.utility_top > self.utility_max:
            raise InvalidInputError(
                f"utility_top (p={self.utility_top}) must not exceed utility_max "
                f"(p_max={self.utility_max}): "
                "candidates are (top_q safety ∩ top_pmax utility) minus top_p utility"
            )
        return self

    # ------------------------------------------------------------------ stages chosen once
    def head_scorer(self) -> HeadScorer:
        """The head scorer these fields choose."""
        stop = None
        if self.head_prompts == "adaptive":
            stop = AdaptiveStop(self.num_heads, self.head_stable_rounds, self.batch_size, self.seed)
        screen = self.head_screen_factor * self.num_heads if self.head_rerun == "screened" else None
        return head_scorer(
            self.head_score, self.ablation_eps, self.subspace_rank, self.head_rerun, stop, screen
        )

    def restoration_policy(self) -> RestorationPolicy:
        """The restoration policy these fields choose."""
        if self.neuron_score == "restore_gain":
            return RestoreGainRestoration(
                self.utility_tolerance,
                self.rounds,
                self.preserve_nm,
                self.offload_statistics,
                self.benign_weight,
                self.benign_stop_margin,
            )
        return ImportanceRestoration(
            self.neuron_score, self.safety_top, self.utility_top, self.utility_max,
            self.preserve_nm, self.max_restored_per_10k is not None,
        )  # fmt: skip
