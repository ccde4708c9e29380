"""The classical baseline row: TF-IDF word 1-2 grams + logistic regression on the same splits, no
transformer. It runs through `execute` like any run; the fitting is in `peft_tui.engine.baseline`."""

from __future__ import annotations

from peft_tui.engine.baseline import run_tfidf
from peft_tui.engine.methods import Method, register


@register
class Tfidf(Method):
    name = "tfidf"
    summary = "TF-IDF word 1-2 grams + logistic regression: the classical baseline (no transformer)"
    default_lr = 0.0  # not trained by gradient descent: no learning rate
    params = {}
    is_baseline = True
    run = staticmethod(run_tfidf)
