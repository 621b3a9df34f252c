"""Did the model refuse, comply, or break? The substring judge and the one refusal-rate function
(``substring``), model-based judges (``model_judges``), Arditi et al.'s refusal score read from
the first-token distribution (``scores``), and the judge panel: three verdicts per
reply (``panel``), the fluency check (``broken``), the offline semantic judge (``semantic``),
the labelled reference set (``reference``) and the interventions it was made under (``variants``).

``make_judge("panel").verdicts(loaded, instructions, replies, intervention)`` gives one
``Verdict`` per reply. The semantic judge's encoder is imported on first use.
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
