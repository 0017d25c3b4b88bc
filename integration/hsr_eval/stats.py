"""The uncertainty of every safety number: Wilson intervals, a paired bootstrap for RSR, and an
exact McNemar test, over per-prompt outcomes.

Only the standard library is used, so both virtualenvs (and `hsr sweep`) import it. Outcomes are
0/1 per prompt (1 = the event the rate counts: an unsafe answer, a refusal, a correct answer).
Paired statistics compare models on the same prompts, matched by document id.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "RsrInterval",
    "mcnemar_exact",
    "paired_bootstrap_rsr",
    "rate_summary",
    "rsr",
    "wilson_interval",
]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a rate of `k` events in `n` trials.

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0 of n and n of n.
    """
    if n < 1:
        raise ValueError(f"a rate needs at least one trial, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n]: k={k}, n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at 0 of n and n of n the ends are exactly 0 and 1; rounding would put them just outside
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def rate_summary(outcomes: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """`{"k", "n", "rate", "ci95"}` of 0/1 outcomes (the interval is Wilson's)."""
    values = [_binary(v) for v in outcomes]
    k, n = sum(values), len(values)
    low, high = wilson_interval(k, n, confidence)
    return {"k": k, "n": n, "rate": k / n, "ci95": [low, high]}


def mcnemar_exact(before: Mapping[Any, float], after: Mapping[Any, float]) -> dict[str, Any]:
    """Exact two-sided McNemar test of two models' 0/1 outcomes on the same prompts.

    Only the discordant prompts count: `b` have the event under `before` only, `c` under
    `after` only; under the null hypothesis each discordant prompt goes either way with
    probability 1/2, so p = P(Binomial(b + c, 1/2) is at least as far from (b + c)/2 as b).
    """
    shared = _shared_ids(before, after)
    b = sum(1 for i in shared if _binary(before[i]) and not _binary(after[i]))
    c = sum(1 for i in shared if not _binary(before[i]) and _binary(after[i]))
    m = b + c
    if m == 0:
        return {"b": 0, "c": 0, "n": len(shared), "p_value": 1.0}
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2**m
    return {"b": b, "c": c, "n": len(shared), "p_value": min(1.0, 2 * tail)}


def rsr(asr_dense: float, asr_pruned: float, asr_realigned: float) -> float | None:
    """RSR = (ASR_pruned - ASR_hsr) / (ASR_pruned - ASR_dense); None where pruning changed
    nothing."""
    if abs(asr_pruned - asr_dense) < 1e-12:
        return None
    return (asr_pruned - asr_realigned) / (asr_pruned - asr_dense)


@dataclass(frozen=True)
class RsrInterval:
    """A percentile bootstrap interval of RSR, and how it was drawn."""

    low: float | None
    high: float | None
    resamples: int
    undefined: int  # resamples where pruning changed no ASR (RSR undefined): left out
    seed: int
    n: int  # prompts shared by the three models

    def as_json(self) -> dict[str, Any]:
        return {
            "ci95": None if self.low is None else [self.low, self.high],
            "resamples": self.resamples,
            "undefined_resamples": self.undefined,
            "seed": self.seed,
            "n": self.n,
        }


def paired_bootstrap_rsr(
    dense: Mapping[Any, float],
    pruned: Mapping[Any, float],
    realigned: Mapping[Any, float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> RsrInterval:
    """RSR's interval from resampling prompts with replacement, the three models together.

    Each argument maps a prompt's id to its unsafe outcome (0/1). A resample where the dense
    and the pruned model have the same ASR has no RSR; those are counted and left out. The
    interval is the percentile interval of the others (None when fewer than half are defined).
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    ids = _shared_ids(dense, pruned, realigned)
    d = [_binary(dense[i]) for i in ids]
    p = [_binary(pruned[i]) for i in ids]
    h = [_binary(realigned[i]) for i in ids]
    n = len(ids)
    rng = random.Random(seed)
    values: list[float] = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        sd, sp, sh = (sum(x[j] for j in picks) for x in (d, p, h))
        value = rsr(sd / n, sp / n, sh / n)
        if value is not None:
            values.append(value)
    undefined = resamples - len(values)
    if len(values) < resamples / 2:
        return RsrInterval(None, None, resamples, undefined, seed, n)
    values.sort()
    alpha = (1 - confidence) / 2
    return RsrInterval(
        _quantile(values, alpha), _quantile(values, 1 - alpha), resamples, undefined, seed, n
    )


def _quantile(sorted_values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    weight = position - below
    return sorted_values[below] * (1 - weight) + sorted_values[above] * weight


def _shared_ids(*outcomes: Mapping[Any, float]) -> list[Any]:
    ids = set(outcomes[0])
    for other in outcomes[1:]:
        ids &= set(other)
    if not ids:
        raise ValueError("the models share no prompt: paired statistics need the same prompts")
    return sorted(ids, key=str)


def _binary(value: float) -> int:
    if value not in (0, 1):
        raise ValueError(f"an outcome is 0 or 1, got {value!r}")
    return int(value)
