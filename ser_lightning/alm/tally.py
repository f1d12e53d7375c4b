"""What a zero-shot ALM pass counts: candidates per parse strategy (Table 4), valid answers, verifier misses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from ser_lightning.alm.distribution_parsing import PARSE_STRATEGIES

__all__ = ["ParseTally"]


class ParseTally(Metric):
    """Counts of a pass, summed over ranks: candidates per parse strategy, valid utterances, verifier outcomes."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("strategies", torch.zeros(len(PARSE_STRATEGIES), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("utterances", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("valid", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("verifier_unparseable", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("verifier_failures", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, strategies: Sequence[str], valid: Tensor, unparseable: int = 0, failures: int = 0) -> None:
        """Add one batch: every candidate's parse strategy, the per-utterance validity and the verifier's misses."""
        for name in strategies:
            self.strategies[PARSE_STRATEGIES.index(name)] += 1
        self.utterances += valid.numel()
        self.valid += int(valid.sum())
        self.verifier_unparseable += unparseable
        self.verifier_failures += failures

    def compute(self) -> dict[str, Tensor]:
        """``valid_fraction``, ``parse/<strategy>`` counts, ``fallback`` and the verifier's counts."""
        out = {f"parse/{name}": self.strategies[i].float() for i, name in enumerate(PARSE_STRATEGIES)}
        out["valid_fraction"] = self.valid.float() / self.utterances.clamp_min(1).float()
        out["fallback"] = (self.utterances - self.valid).float()
        out["verifier/unparseable"] = self.verifier_unparseable.float()
        out["verifier/failures"] = self.verifier_failures.float()
        return out
