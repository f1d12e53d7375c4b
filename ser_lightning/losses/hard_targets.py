"""The hard label of a sample's target distribution under paper 004's authors' "neutral guard".

Theirs (``zahraomidi/MSP-PODCAST_WavLM`` ``prepare_msp_podcast.py`` ``_consensus_from_dist``, the default
``consensus_rule`` of ``parse_labels_txt``) derives the utterance label ``emo`` (their ``y_idx``, the target of every
hard CE / CB-CE run) from the label distribution they train on (primary, or merged primary + secondary):

- classes are ranked by probability; ties go to a non-neutral class, then to the name later in the alphabet (their
  ``sorted(..., key=(p, non-neutral, name), reverse=True)`` on their lower-case short names, whose alphabetical
  order is the same as the class-set names' lower-cased: ``sad`` < ``surprise`` as ``Sad`` < ``Surprise``);
- a top-ranked Neutral wins only with at least 2 *primary* votes, probability >= 0.35 and a margin >= 0.10 over the
  second-ranked class; otherwise the best non-neutral class wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NEUTRAL_NAMES = ("neutral", "neu")


def tie_order(classes: Sequence[str]) -> list[int]:
    """Class indices in the authors' tie order: non-neutral before neutral, then names descending (lower-cased)."""
    names = [c.lower() for c in classes]
    return sorted(range(len(names)), key=lambda i: (names[i] not in NEUTRAL_NAMES, names[i]), reverse=True)


def neutral_guard_class(
    target: Tensor,
    primary_votes: Tensor,
    classes: Sequence[str],
    min_votes: int = 2,
    min_prob: float = 0.35,
    margin: float = 0.10,
) -> Tensor:
    """``(B,)`` class index of each row of ``target`` ``(B, C)`` under the neutral guard (module docstring).

    Args:
        target: the label distributions the model trains on (each row sums to 1).
        primary_votes: ``(B, C)`` primary vote counts; a row with a NaN (no primary votes, e.g. a DiME mix) gets -1.
        classes: the class names, in column order (Neutral is ``neutral`` / ``neu``, any case).
        min_votes: primary Neutral votes Neutral needs (theirs: ``neu_min_primary`` 2).
        min_prob: probability Neutral needs (theirs: ``neu_min_prob`` 0.35).
        margin: lead over the second-ranked class Neutral needs (theirs: ``neu_margin`` 0.10).
    """
    if target.shape != primary_votes.shape or target.dim() != 2 or target.shape[1] != len(classes):
        raise ValueError(f"target {tuple(target.shape)} and primary_votes {tuple(primary_votes.shape)} must be (B, C)")
    order = torch.as_tensor(tie_order(classes), device=target.device)
    # a stable descending sort of the columns in tie order ranks equal probabilities by that order
    ranked = order[torch.sort(target[:, order], dim=1, descending=True, stable=True).indices]
    top = ranked[:, 0]
    names = [c.lower() for c in classes]
    neutral = next((i for i, n in enumerate(names) if n in NEUTRAL_NAMES), None)
    missing = torch.isnan(primary_votes).any(dim=1)
    if neutral is None or len(classes) < 2:
        return torch.where(missing, torch.full_like(top, -1), top)
    rows = torch.arange(target.shape[0], device=target.device)
    probs = target.double()  # theirs compares Python floats
    p_top, p_second = probs[rows, top], probs[rows, ranked[:, 1]]
    votes = torch.nan_to_num(primary_votes[:, neutral]).round()
    keeps = (votes >= min_votes) & (p_top >= min_prob) & ((p_top - p_second) >= margin)
    # a top-ranked Neutral that fails the guard gives way to the next in rank: the best non-neutral class
    label = torch.where((top == neutral) & ~keeps, ranked[:, 1], top)
    return torch.where(missing, torch.full_like(label, -1), label)
