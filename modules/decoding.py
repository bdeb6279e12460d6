"""Greedy decoding of recognition logits: predicted lengths, texts and confidences (no fastai needed)."""

from __future__ import annotations

import torch

from utils import CharsetMapper


def pt_lengths(logits: torch.Tensor) -> torch.Tensor:
    """Predicted lengths of N x T x C logits: index of the first null (class 0) slot + 1, or T when none is null."""
    is_null = logits.argmax(dim=-1) == 0
    first = is_null.int().argmax(dim=-1)  # argmax returns the first maximal index
    num_slots = torch.full_like(first, logits.shape[1])
    return torch.where(is_null.any(dim=-1), first + 1, num_slots).long()


def decode_logits(logits: torch.Tensor, charset: CharsetMapper) -> tuple[list[str], list[float], torch.Tensor]:
    """Greedy decode of N x T x C logits into (texts, confidences, predicted lengths).

    Text: the argmax class of each slot, cut at the first null. Predicted length: `pt_lengths` (characters plus
    the end slot; T when no slot is null). Confidence: the product of the maximal softmax probabilities over the
    predicted length's slots, i.e. the predicted characters and the end slot when there is one (1.0 for none).
    """
    probs = torch.softmax(logits.detach().float(), dim=-1)
    max_probs, labels = probs.max(dim=-1)
    lengths = pt_lengths(logits.detach())
    counted = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]
    confidences = torch.where(counted, max_probs, torch.ones_like(max_probs)).prod(dim=-1)
    texts = [charset.decode(row) for row in labels.cpu().tolist()]
    return texts, confidences.cpu().tolist(), lengths


def onehot_texts(labels: torch.Tensor, charset: CharsetMapper) -> list[str]:
    """Texts of N x T x C (possibly smoothed) one-hot targets: argmax per slot, cut at the first null."""
    return [charset.decode(row) for row in labels.argmax(dim=-1).cpu().tolist()]
