"""Paired comparison of two prediction sources on the same images: per metric, the mean
difference, wins, losses and ties, and an exact two-sided sign test."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from toonq.worker.evaluation.metrics import METRICS, ImageScores, MetricInfo, mean_score

#: Two scores closer than this are a tie (scores are ratios of pixel counts, so equal masks give
#: exactly equal scores and one pixel of 1024² moves a score by about 1e-6).
TIE_TOLERANCE: Final = 1e-12

Side = Literal["A", "B"]


@dataclass(frozen=True)
class PairedComparison:
    """How B compares with A on one metric, over the images where both scores are defined."""

    metric: MetricInfo
    #: Images where both scores are defined.
    count: int
    #: Mean of (B - A); None when no image has both scores.
    mean_difference: float | None
    a_better: int
    b_better: int
    ties: int
    #: Exact two-sided sign test over the untied pairs; 1.0 when every pair is tied.
    p_value: float

    @property
    def better(self) -> Side | None:
        """The side whose mean is better (in the metric's direction); None for a tie."""
        if self.mean_difference is None or abs(self.mean_difference) <= TIE_TOLERANCE:
            return None
        b_higher = self.mean_difference > 0
        return "B" if b_higher == self.metric.higher_is_better else "A"

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.count,
            "mean_difference": self.mean_difference,
            "a_better": self.a_better,
            "b_better": self.b_better,
            "ties": self.ties,
            "p_value": self.p_value,
            "better": self.better,
        }


def compare(
    a: Mapping[str, ImageScores], b: Mapping[str, ImageScores]
) -> dict[str, PairedComparison]:
    """Compare B with A on every metric, pairing images by name; keyed by metric name."""
    names = sorted(a.keys() & b.keys())
    return {
        metric.name: _compare_metric(
            metric, [(a[n].as_dict()[metric.name], b[n].as_dict()[metric.name]) for n in names]
        )
        for metric in METRICS
    }


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the probability, under a fair coin, of a split at least as
    uneven as `wins` : `losses`. 1.0 for no pair."""
    trials = wins + losses
    if trials == 0:
        return 1.0
    tail = sum(math.comb(trials, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / (1 << trials))


def _compare_metric(
    metric: MetricInfo, pairs: list[tuple[float | None, float | None]]
) -> PairedComparison:
    differences = [b - a for a, b in pairs if a is not None and b is not None]
    b_higher = sum(d > TIE_TOLERANCE for d in differences)
    a_higher = sum(d < -TIE_TOLERANCE for d in differences)
    # For a lower-is-better metric (MAE, halo), the higher score loses.
    a_better, b_better = (a_higher, b_higher) if metric.higher_is_better else (b_higher, a_higher)
    return PairedComparison(
        metric=metric,
        count=len(differences),
        mean_difference=mean_score(differences),
        a_better=a_better,
        b_better=b_better,
        ties=len(differences) - a_higher - b_higher,
        p_value=sign_test(a_better, b_better),
    )
