"""Scores: pooled confusion-matrix scores, per-patient overlap and boundary scores, and the
paired comparison of two methods over the same patients."""

from upseg.metrics.confusion import (
    ConfusionMatrix,
    labels_from_logits,
    one_vs_rest,
    overlap_scores,
    paper_dice,
    paper_dice_per_class,
    paper_jaccard,
    paper_jaccard_per_class,
)
from upseg.metrics.paired import PairedDifference, compare_patients, paired_difference
from upseg.metrics.patients import (
    DEFAULT_TOLERANCE,
    HIGHER_IS_BETTER,
    PATIENT_METRICS,
    patient_rows,
    patient_scores,
    score_groups,
    summarise,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "HIGHER_IS_BETTER",
    "PATIENT_METRICS",
    "ConfusionMatrix",
    "PairedDifference",
    "compare_patients",
    "labels_from_logits",
    "one_vs_rest",
    "overlap_scores",
    "paired_difference",
    "paper_dice",
    "paper_dice_per_class",
    "paper_jaccard",
    "paper_jaccard_per_class",
    "patient_rows",
    "patient_scores",
    "score_groups",
    "summarise",
]
