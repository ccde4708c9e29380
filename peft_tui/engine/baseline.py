"""The classical baseline: TF-IDF (word 1-2 grams) + logistic regression on the same splits as the
transformer runs. Registered as the method "tfidf" (methods/tfidf.py), so it runs through `execute`
like any run and reports a RunResult: trainable_pct and peak memory are None (no base model to take a
share of, and the process's memory is not this fit's alone)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from peft_tui.engine.events import EvalLogged, LogMessage, RunStarted, Sink
from peft_tui.engine.result import Cancelled, RunResult, efficiency
from peft_tui.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.config import RunConfig
    from peft_tui.engine.data import DataSplits, Split


def _texts(split: Split) -> list[str]:
    """Sentence pairs: both sentences in one bag of words."""
    return split.texts if split.pairs is None else [f"{a} || {b}" for a, b in zip(split.texts, split.pairs)]


def run_tfidf(config: RunConfig, run_id: int, sink: Sink, cancel: threading.Event, out_dir: Path,
              data: DataSplits | None = None, cache_dir: Path | None = None) -> RunResult:
    import sklearn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    from peft_tui.engine.data import load_splits

    if data is None:
        data = load_splits(config.data, config.seed)
    for note in data.notes:
        sink(LogMessage(run_id, "info", note))
    if cancel.is_set():
        raise Cancelled(0)

    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    try:
        x_train = vec.fit_transform(_texts(data.train))
    except ValueError as e:
        if "empty vocabulary" not in str(e):
            raise
        raise ConfigError("the TF-IDF baseline found no words in the training texts (each is a single character "
                          "or whitespace): check the text column, or leave the baseline out") from None
    rows = 1 if data.num_labels == 2 else data.num_labels  # one weight vector (and intercept) per class
    trainable = (x_train.shape[1] + 1) * rows
    sink(RunStarted(run_id, config.display_name, config.method, 1, 1, trainable, trainable, "cpu", "fp64",
                    len(data.train), data.num_labels))
    clf = LogisticRegression(max_iter=2000, C=10.0, random_state=config.seed)
    clf.fit(x_train, data.train.labels)
    train_time = time.perf_counter() - t0

    def score(split: str) -> tuple[float, float, float]:
        s = {"val": data.val, "test": data.test}[split]
        x = vec.transform(_texts(s))
        pred = clf.predict(x)
        acc = float(accuracy_score(s.labels, pred))
        f1 = float(f1_score(s.labels, pred, average="macro"))
        loss = float(log_loss(s.labels, clf.predict_proba(x), labels=clf.classes_))
        sink(EvalLogged(run_id, 1, 1.0, split, loss, acc, f1))
        return acc, f1, loss

    val_acc, val_f1, _ = score("val")
    acc, f1, test_loss = score("test")
    return RunResult(
        run_id=run_id, name=config.display_name, method=config.method, model="tfidf+logreg", data=data.source,
        accuracy=acc, f1=f1, test_loss=test_loss,
        val_accuracy=val_acc, val_f1=val_f1, best_val_accuracy=val_acc,
        trainable_params=trainable, total_params=trainable, trainable_pct=None, peak_memory_mb=None,
        train_time_s=train_time, wall_time_s=time.perf_counter() - t0,
        samples_per_s=len(data.train) / max(train_time, 1e-9),
        steps=1, epochs_done=1.0, device="cpu", precision="fp64", seed=config.seed,
        label_names=data.label_names,
        sizes={"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        efficiency=efficiency(acc, trainable),
        versions={"scikit-learn": sklearn.__version__},
    )
