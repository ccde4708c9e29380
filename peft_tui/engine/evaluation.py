"""Evaluation: loss, accuracy and macro F1 of a model on one split."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from peft_tui.engine.batching import collate


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    f1: float


def macro_f1(y_true: list[int], y_pred: list[int], num_labels: int) -> float:
    """Mean F1 over the classes present in `y_true` or `y_pred`."""
    f1s = []
    for c in range(num_labels):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == c and p != c)
        if tp + fp + fn == 0:
            continue  # class absent from both: not counted
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 0.0


def evaluate(model, ids: list[list[int]], labels: list[int], num_labels: int, batch_size: int, pad_id: int,
             device: str, autocast: Callable[[], AbstractContextManager]) -> EvalResult:
    """Batches sorted by length under inference_mode; the model is back in training mode afterwards."""
    import torch
    import torch.nn.functional as F

    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    preds = [0] * len(ids)
    total_loss = 0.0
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            batch = order[b : b + batch_size]
            x, m, y = collate(ids, labels, batch, pad_id, device)
            with autocast():
                logits = model(input_ids=x, attention_mask=m).logits.float()
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            for i, p in zip(batch, logits.argmax(-1).tolist()):
                preds[i] = p
    model.train()
    acc = sum(int(p == t) for p, t in zip(preds, labels)) / max(1, len(labels))
    return EvalResult(total_loss / max(1, len(labels)), acc, macro_f1(labels, preds, num_labels))
