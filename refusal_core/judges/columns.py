"""Verdicts for several columns of replies to the same prompts (one column per intervention).

Side-by-side runs judge many columns at once. The broken detector's fluency forward runs on
the unmodified model, so it does not depend on the column: a JudgePanel reads each distinct
(prompt, reply) pair once, however many columns share it (an ablation that leaves a reply
unchanged, the same reply under several variants). Each column's first-token refusal score
comes from the log-probs its generation's first step gave (``generate_side_by_side``'s
``first_logprobs``), so judging runs no other forward.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from refusal_core.interventions.spec import Intervention
from refusal_core.judges.broken import fluency_stats
from refusal_core.judges.panel import JudgePanel, Verdict
from refusal_core.judges.scores import refusal_token_ids
from refusal_core.model.forward import refusal_log_odds
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.chat import ChatFormat

__all__ = ["column_verdicts"]


def column_verdicts(
    judge,
    loaded: LoadedModel,
    instructions: Sequence[str],
    replies: Mapping[str, Sequence[str]],
    firsts: Mapping[str, torch.Tensor],
    interventions: Mapping[str, Intervention],
    chat: ChatFormat | None = None,
) -> dict[str, list[Verdict]]:
    """``{column: verdicts}`` for ``replies[column]`` (one per instruction), produced under
    ``interventions[column]`` with first-token log-probs ``firsts[column]`` ``[n, vocab]``."""
    if not isinstance(judge, JudgePanel) or not judge.settings.detect_broken:
        return {
            name: list(
                judge.verdicts(
                    loaded,
                    list(instructions),
                    list(texts),
                    interventions[name],
                    first_token_logprobs=firsts[name],
                    chat=chat,
                )
            )
            for name, texts in replies.items()
        }
    pairs = list(dict.fromkeys((i, text) for texts in replies.values() for i, text in zip(instructions, texts)))
    stats = dict(
        zip(pairs, fluency_stats(loaded, [i for i, _ in pairs], [t for _, t in pairs], chat, judge.settings.batch_size))
    )
    thresholds = judge.detector.thresholds_for(loaded, chat)
    ids = refusal_token_ids(loaded.tokenizer)
    out = {}
    for name, texts in replies.items():
        scores = refusal_log_odds(firsts[name], ids).tolist() if "refusal_score" in judge.settings.members else None
        out[name] = judge.verdicts_from_features(
            list(texts), scores, [stats[i, t] for i, t in zip(instructions, texts)], thresholds
        )
    return out
