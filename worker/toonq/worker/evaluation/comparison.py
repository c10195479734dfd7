"""Paired comparison of two prediction sources on the same images: per metric, the mean
difference, wins, losses and ties, and an exact two-sided sign test; and the verdict, which one
metric valid for the pair decides (`verdict`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from toonq.worker.evaluation.metrics import METRICS, ImageScores, MetricInfo, mean_score

#: Two scores closer than this are a tie (scores are ratios of pixel counts, so equal masks give
#: exactly equal scores and one pixel of 1024² moves a score by about 1e-6).
TIE_TOLERANCE: Final = 1e-12

#: The metric that decides the verdict when Pixel Accuracy can: ToonOut's headline metric.
PRIMARY_METRIC: Final = "pixel_accuracy"
#: The metric that decides otherwise: defined for every image, bounded in [0, 1] and growing
#: with every wrong grey level, so a lower mean always means a closer mask.
FALLBACK_METRIC: Final = "mae"

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
    #: Images where the metric does not rank A's or B's mask (Pixel Accuracy once more pixels
    #: are wrong than the ground truth has foreground); when any, it names no better side.
    unranked: tuple[str, ...] = ()

    @property
    def comparable(self) -> bool:
        """Whether the metric ranks the two sources: some image has both scores, none unranked."""
        return self.count > 0 and not self.unranked

    @property
    def better(self) -> Side | None:
        """The side whose mean is better (in the metric's direction); None for a tie, or when
        the metric cannot rank the pair (`comparable`)."""
        if not self.comparable or self.mean_difference is None:
            return None
        if abs(self.mean_difference) <= TIE_TOLERANCE:
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
            "comparable": self.comparable,
            "unranked": list(self.unranked),
            "better": self.better,
        }


@dataclass(frozen=True)
class Verdict:
    """Which source is better, by the one metric valid for the pair, and why that metric."""

    decided_by: PairedComparison
    reason: str
    #: The Pixel Accuracy comparison, whose `unranked` images call for a caveat.
    pixel_accuracy: PairedComparison

    @property
    def better(self) -> Side | None:
        return self.decided_by.better

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.decided_by.metric.name,
            "better": self.better,
            "p_value": self.decided_by.p_value,
            "reason": self.reason,
            "pixel_accuracy_unranked": list(self.pixel_accuracy.unranked),
        }


def verdict(comparisons: Mapping[str, PairedComparison]) -> Verdict:
    """Pixel Accuracy decides when it ranks the pair; otherwise MAE, with the reason.

    ToonOut squares 1 - wrong / foreground, so past as many wrong pixels as the ground truth has
    foreground the score grows again with the error, and above 1 (past twice the foreground) it
    is larger than any good mask's: there a higher Pixel Accuracy means a worse mask. One such
    image of either source, and Pixel Accuracy's mean and wins no longer rank the pair.
    """
    primary = comparisons[PRIMARY_METRIC]
    fallback = comparisons[FALLBACK_METRIC]
    if primary.comparable:
        return Verdict(
            primary,
            f"{primary.metric.title} ranks every image of both sources (fewer wrong pixels "
            "than ground-truth foreground).",
            primary,
        )
    if primary.unranked:
        why = (
            f"{primary.metric.title} does not rank {len(primary.unranked)} image(s), where a "
            "higher score means a worse mask, so it cannot rank the pair"
        )
    else:
        why = f"{primary.metric.title} is defined for no image of both sources"
    return Verdict(
        fallback,
        f"{why}; {fallback.metric.title} decides: it is bounded in [0, 1] and grows with "
        "every wrong grey level.",
        primary,
    )


def compare(
    a: Mapping[str, ImageScores], b: Mapping[str, ImageScores]
) -> dict[str, PairedComparison]:
    """Compare B with A on every metric, pairing images by name; keyed by metric name."""
    names = sorted(a.keys() & b.keys())
    unranked = tuple(n for n in names if not (_ranked(a[n]) and _ranked(b[n])))
    return {
        metric.name: _compare_metric(
            metric,
            [(a[n].as_dict()[metric.name], b[n].as_dict()[metric.name]) for n in names],
            unranked if metric.name == PRIMARY_METRIC else (),
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


def _ranked(scores: ImageScores) -> bool:
    """Whether Pixel Accuracy ranks this mask; above 1 it never does."""
    pa = scores.pixel_accuracy
    return scores.pixel_accuracy_ranks is not False and (pa is None or pa <= 1)


def _compare_metric(
    metric: MetricInfo,
    pairs: list[tuple[float | None, float | None]],
    unranked: tuple[str, ...],
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
        unranked=unranked,
    )
