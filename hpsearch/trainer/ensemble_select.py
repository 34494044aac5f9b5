"""Scoring averaged softmax outputs, and greedy ensemble selection on validation predictions.

Selection follows Caruana et al., "Ensemble Selection from Libraries of Models" (ICML 2004), as
auto-sklearn ships it: start from an empty ensemble and, for a fixed number of rounds, add the
candidate (with replacement, so a model may be added again) whose addition gives the averaged
outputs the best validation accuracy. The weights are the counts over the rounds. Torch only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GREEDY_ROUNDS = 25  # additions; with replacement, so weights are multiples of 1/25
EPS = 1e-12  # keeps log(0) out of the loss of a confidently wrong model


def score_probs(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean negative log-likelihood, accuracy) of softmax outputs against the labels."""
    picked = probs[torch.arange(len(labels)), labels]
    loss = -picked.clamp_min(EPS).log().double().mean().item()
    acc = (probs.argmax(1) == labels).double().mean().item()
    return loss, acc


def average(probs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """The weighted mean of several models' softmax outputs."""
    total = sum(weights)
    return sum(w * p for w, p in zip(weights, probs, strict=True)) / total


def greedy_weights(probs: Sequence[torch.Tensor], labels: torch.Tensor,
                   rounds: int = GREEDY_ROUNDS) -> list[float]:
    """Caruana's selection with replacement: one weight per candidate (summing to 1; a
    candidate never picked gets 0). Each round adds the candidate that maximises the
    validation accuracy of the running average; ties go to the lower loss, then to the
    earlier candidate (the better-ranked trial)."""
    counts = [0] * len(probs)
    running = torch.zeros_like(probs[0])
    for done in range(rounds):
        scores = [score_probs((running + candidate) / (done + 1), labels) for candidate in probs]
        pick = min(range(len(probs)), key=lambda i: (-scores[i][1], scores[i][0]))
        counts[pick] += 1
        running += probs[pick]
    return [c / rounds for c in counts]
