"""Judges of generated replies: refused, complied or broken (issue 15).

``make_judge("panel").verdicts(loaded, instructions, replies, intervention)`` gives one
``Verdict`` per reply. The API and what is cached: README "Judges" and the docstrings of
``panel``, ``broken`` and ``semantic``. The semantic judge's encoder is imported on first use.
"""

from refusal_core.judges.broken import BrokenDetector, BrokenSettings, BrokenThresholds, FluencyStats, fluency_stats, is_broken
from refusal_core.judges.panel import (
    JUDGE_NAMES,
    MEMBERS,
    MIN_RATE_TOKENS,
    JudgePanel,
    PanelSettings,
    Verdict,
    make_judge,
    refusal_log_odds,
    verdict_rates,
)


def __getattr__(name: str):
    # The semantic judge pulls in the sentence encoder's package only when asked for.
    if name in ("SemanticJudge", "SemanticClassifier", "embed_replies"):
        from refusal_core.judges import semantic

        return getattr(semantic, name)
    raise AttributeError(name)


__all__ = [
    "JUDGE_NAMES",
    "MEMBERS",
    "MIN_RATE_TOKENS",
    "BrokenDetector",
    "BrokenSettings",
    "BrokenThresholds",
    "FluencyStats",
    "JudgePanel",
    "PanelSettings",
    "SemanticClassifier",
    "SemanticJudge",
    "Verdict",
    "embed_replies",
    "fluency_stats",
    "is_broken",
    "make_judge",
    "refusal_log_odds",
    "verdict_rates",
]
