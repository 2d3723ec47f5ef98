"""Canary rollout decisions: the analysis of a canary against production
(:mod:`serving.rollout.analysis`) and the state machine that advances, promotes or rolls
back on its verdicts (:mod:`serving.rollout.controller`). Pure: no I/O, no clock.
"""

from serving.rollout.analysis import (
    AnalysisError,
    AnalysisPolicy,
    Check,
    FeedbackCounts,
    Verdict,
    VersionWindow,
    analyse,
    feedback_counts,
    prob_canary_worse,
    two_proportion_test,
)
from serving.rollout.controller import (
    Decision,
    RolloutError,
    RolloutPolicy,
    RolloutState,
    advance,
    analysis_due,
    pause,
    promote,
    resume,
    rollback,
    start,
)

__all__ = [
    "AnalysisError", "AnalysisPolicy", "Check", "FeedbackCounts", "Verdict", "VersionWindow", "analyse",
    "feedback_counts", "prob_canary_worse", "two_proportion_test",
    "Decision", "RolloutError", "RolloutPolicy", "RolloutState", "advance", "analysis_due", "pause", "promote",
    "resume", "rollback", "start",
]
