"""The classical baseline row: TF-IDF (word 1-2 grams) + logistic regression on the same splits."""

from __future__ import annotations

import time
from typing import Any

from peft_tui.config import DataConfig


def tfidf_baseline(data_cfg: DataConfig, seed: int) -> dict[str, Any]:
    import psutil
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from peft_tui.engine.data import load_splits
    from peft_tui.engine.trainer import efficiency

    data = load_splits(data_cfg, seed)

    def texts(split):  # sentence pairs: both sentences in one bag of words
        return split.texts if split.pairs is None else [f"{a} || {b}" for a, b in zip(split.texts, split.pairs)]

    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vec.fit_transform(texts(data.train))
    clf = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    clf.fit(x_train, data.train.labels)
    train_time = time.perf_counter() - t0
    pred = clf.predict(vec.transform(texts(data.test)))
    val_pred = clf.predict(vec.transform(texts(data.val)))
    acc = float(accuracy_score(data.test.labels, pred))
    trainable = int(clf.coef_.size + clf.intercept_.size)
    return {
        "name": "tfidf",
        "method": "tfidf",
        "model": "tfidf+logreg",
        "data": data.source,
        "accuracy": acc,
        "f1": float(f1_score(data.test.labels, pred, average="macro")),
        "val_accuracy": float(accuracy_score(data.val.labels, val_pred)),
        "trainable_params": trainable,
        "total_params": trainable,
        "trainable_pct": 100.0,
        "train_time_s": train_time,
        "samples_per_s": len(data.train) / max(train_time, 1e-9),
        "peak_memory_mb": psutil.Process().memory_info().rss / 2**20,
        "memory_kind": "process RSS",
        "efficiency": efficiency(acc, trainable),
        "device": "cpu",
        "label_names": data.label_names,
        "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
    }
