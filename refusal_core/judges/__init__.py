"""Did the model refuse, comply, deflect, or break? The verdicts and the judge protocol
(``verdict``), the judge registry (``registry``: every judge the CLI and the pages offer), the
learned four-verdict judge (``learned``, over ``features``). The substring judge and the one refusal-rate function
(``substring``), model-based judges (``model_judges``), Arditi et al.'s refusal score read from
the first-token distribution (``scores``), and the judge panel: three verdicts per
reply (``panel``), the fluency check (``broken``), the offline semantic judge (``semantic``),
the labelled reference set (``reference``) and the interventions it was made under (``variants``).

``make_judge("panel").verdicts(loaded, instructions, replies, intervention)`` gives one
``Verdict`` per reply. The semantic judge's encoder is imported on first use.
"""

from refusal_core.judges.broken import (
    BrokenDetector,
    BrokenSettings,
    BrokenThresholds,
    FluencyStats,
    fluency_stats,
    is_broken,
)
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
from refusal_core.judges.registry import DEFAULT_JUDGE, build_judge, judge_names
from refusal_core.judges.verdict import DEFAULT_SUCCESS, LABELS, ReplyJudge, success_share


def __getattr__(name: str):
    # The semantic judge pulls in the sentence encoder's package only when asked for.
    if name in ("SemanticJudge", "SemanticClassifier", "embed_replies"):
        from refusal_core.judges import semantic

        return getattr(semantic, name)
    raise AttributeError(name)


__all__ = [
    "DEFAULT_JUDGE",
    "DEFAULT_SUCCESS",
    "LABELS",
    "ReplyJudge",
    "build_judge",
    "judge_names",
    "success_share",
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
