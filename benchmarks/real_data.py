"""Evidence on real data (issue 12): accuracy, macro F1, trainable parameters and time per method on
AG News and the IMDB subset, through the engine's own code.

    python benchmarks/real_data.py features --dataset ag_news
        frozen MiniLM, one encoding pass, logistic regression (C chosen on validation) on several
        pooled vectors: mean, max, the raw [CLS] vector and BERT's pooler output tanh(dense([CLS]))
    python benchmarks/real_data.py runs --dataset ag_news "head" "head-loop" "tfidf" "lora r=16 lr=1e-3"
        one run per spec: a method name, then key=value pairs; RunConfig fields (lr, epochs, batch_size,
        pooling, max_length, weight_decay, warmup_ratio, seed, head_init) set the run, others are method parameters.
        "head" is the linear probe (its `run` hook); "head-loop" is the head trained by the standard loop;
        "tfidf" is the TF-IDF + logistic regression baseline.

Data (read-only; --datasets points elsewhere, default /work/shared/datasets):
- ag_news: ag_news_test.csv (7,600 rows, 4 balanced classes): 2,000 stratified training rows, the other
  5,600 split evenly into validation and test (DataConfig fractions 2800/7600 each); max_length 128.
- imdb: imdb_train100.csv (100 rows) trains; imdb_test500.csv is split, stratified, into 150 validation
  and 350 test rows (written once under --workdir); max_length 512 (the model's limit: 87% of the
  reviews fit whole, the median is 223 tokens).
- ag_news_4k: 4,100 of AG News' rows (seeded shuffle): 2,000 train, 700 validation, 1,400 test (one
  standard error about 0.8 points); for series that cannot afford 5,600 evaluation rows per run.
- synthetic: the built-in synthetic set (DataConfig's defaults, 2,400 sentences); max_length 128.
Runs use 3 epochs and seed 42 unless a spec says otherwise. Each finished row is appended as JSON to
--out, so a long series can be read while it runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from peft_tui.config import DataConfig, RunConfig

RUN_FIELDS = {"lr": float, "epochs": int, "batch_size": int, "pooling": str, "max_length": int,
              "weight_decay": float, "warmup_ratio": float, "seed": int, "head_init": str}


def dataset(name: str, root: Path, workdir: Path) -> tuple[DataConfig, int]:
    """(DataConfig, max_length) for a named real dataset."""
    if name == "ag_news":
        frac = 2800 / 7600
        return DataConfig(source=str(root / "ag_news" / "ag_news_test.csv"), val_fraction=frac, test_fraction=frac), 128
    if name == "imdb":
        val, test = workdir / "imdb_val150.csv", workdir / "imdb_test350.csv"
        if not test.exists():
            with open(root / "imdb" / "imdb_test500.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            by_label: dict[str, list[dict]] = {}
            for r in rows:
                by_label.setdefault(r["label"], []).append(r)
            rng = random.Random(0)
            val_rows, test_rows = [], []
            for group in by_label.values():
                rng.shuffle(group)
                k = round(len(group) * 150 / len(rows))
                val_rows += group[:k]
                test_rows += group[k:]
            workdir.mkdir(parents=True, exist_ok=True)
            for path, part in ((val, val_rows), (test, test_rows)):
                with open(path, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=["text", "label"])
                    w.writeheader()
                    w.writerows(part)
        return DataConfig(source=str(root / "imdb" / "imdb_train100.csv"), val_source=str(val),
                          test_source=str(test), val_fraction=0.0, test_fraction=0.0), 512
    if name == "ag_news_4k":  # 2,000 training rows as ag_news, a smaller validation (700) and test (1,400)
        path = workdir / "ag_news_4100.csv"
        if not path.exists():
            with open(root / "ag_news" / "ag_news_test.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            random.Random(0).shuffle(rows)
            workdir.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["text", "label"])
                w.writeheader()
                w.writerows({"text": r["text"], "label": r["label"]} for r in rows[:4100])
        return DataConfig(source=str(path), val_fraction=700 / 4100, test_fraction=1400 / 4100), 128
    if name == "synthetic":  # the built-in set of the default comparison (2,400 sentences)
        return DataConfig(), 128
    raise SystemExit(f"unknown dataset {name!r}: use ag_news, imdb or synthetic")


# ------------------------------------------------------------------------------------------------
# features: frozen MiniLM + logistic regression
# ------------------------------------------------------------------------------------------------
def pooled_features(model, tok, texts: list[str], max_length: int, batch_size: int = 64) -> dict[str, object]:
    """One pass of the frozen MiniLM; the pooled vectors of every text, per pooling, as numpy arrays."""
    import numpy as np
    import torch

    from peft_tui.engine.batching import collate, tokenize
    from peft_tui.engine.pooling import pool

    ids = tokenize(tok, texts, max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: dict[str, list] = {"mean": [None] * len(ids), "max": [None] * len(ids), "cls (raw)": [None] * len(ids),
                            "cls (pooler)": [None] * len(ids)}
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            batch = order[b : b + batch_size]
            x, m, _ = collate(ids, [0] * len(ids), batch, tok.pad_token_id, "cpu")
            o = model.bert(input_ids=x, attention_mask=m)
            h = o.last_hidden_state
            got = {"mean": pool(h, m, "mean"), "max": pool(h, m, "max"), "cls (raw)": h[:, 0],
                   "cls (pooler)": o.pooler_output}
            for k, v in got.items():
                for i, row in zip(batch, v.numpy()):
                    out[k][i] = row
    return {k: np.stack(v) for k, v in out.items()}


def logistic_regression(x_tr, y_tr, x_va, y_va, x_te, y_te) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    scale = StandardScaler().fit(x_tr)
    x_tr, x_va, x_te = scale.transform(x_tr), scale.transform(x_va), scale.transform(x_te)
    best = None
    for c in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0):
        clf = LogisticRegression(C=c, max_iter=3000).fit(x_tr, y_tr)
        acc = accuracy_score(y_va, clf.predict(x_va))
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    val_acc, c, clf = best
    pred = clf.predict(x_te)
    return {"accuracy": accuracy_score(y_te, pred), "f1": f1_score(y_te, pred, average="macro"),
            "val_accuracy": val_acc, "C": c}


def features(args) -> None:
    from peft_tui.engine import models
    from peft_tui.engine.data import load_splits

    data_cfg, max_length = dataset(args.dataset, Path(args.datasets), Path(args.workdir))
    max_length = args.max_length or max_length
    data = load_splits(data_cfg, 42)
    tok = models.load_tokenizer("minilm")
    model = models.load_model("minilm", 2, 0, pooling="cls").eval()  # native: keeps BERT's pooler layer
    t0 = time.perf_counter()
    feats = {name: pooled_features(model, tok, split.texts, max_length)
             for name, split in (("train", data.train), ("val", data.val), ("test", data.test))}
    encode_s = time.perf_counter() - t0
    print(f"{args.dataset}: {len(data.train)}/{len(data.val)}/{len(data.test)} rows, max_length {max_length}, "
          f"encoded in {encode_s:.0f} s")
    print(f"{'features':14} {'acc %':>6} {'F1 %':>6} {'val %':>6} {'C':>6} {'fit s':>6}")
    for pooling in feats["train"]:
        t = time.perf_counter()
        r = logistic_regression(feats["train"][pooling], data.train.labels, feats["val"][pooling], data.val.labels,
                                feats["test"][pooling], data.test.labels)
        fit_s = time.perf_counter() - t
        print(f"{pooling:14} {100 * r['accuracy']:6.2f} {100 * r['f1']:6.2f} {100 * r['val_accuracy']:6.2f} "
              f"{r['C']:6g} {fit_s:6.1f}", flush=True)
        record(args.out, {"kind": "features", "dataset": args.dataset, "max_length": max_length, "pooling": pooling,
                          "encode_s": encode_s, "fit_s": fit_s, **r})


# ------------------------------------------------------------------------------------------------
# runs: methods through the engine
# ------------------------------------------------------------------------------------------------
def parse_spec(spec: str, data_cfg: DataConfig, max_length: int) -> tuple[str, RunConfig]:
    from peft_tui.engine.methods import get_method

    words = spec.split()
    label, method = words[0], "head" if words[0] == "head-loop" else words[0]
    fields: dict = {"epochs": 3, "seed": 42, "max_length": max_length}
    params: dict = {}
    for word in words[1:]:
        key, _, raw = word.partition("=")
        if key in RUN_FIELDS:
            fields[key] = RUN_FIELDS[key](raw)
        else:
            params[key] = get_method(method).params[key].parse(raw)
    return label, RunConfig(method=method, model="minilm", data=data_cfg, params=params, device="cpu",
                            name=re.sub(r"[^A-Za-z0-9._-]+", "_", spec)[:64], **fields)


def run_one(label: str, config: RunConfig) -> dict:
    """One run as `execute` runs it (a method's own `run` hook, else the training loop), without a store;
    "head-loop" forces the training loop on the head method."""
    from peft_tui.engine import trainer
    from peft_tui.engine.methods import get_method

    out_dir = Path(tempfile.mkdtemp(prefix="peft-real-"))
    hook = get_method(config.method).run if label != "head-loop" else None
    t0 = time.perf_counter()
    if hook is not None:
        result = hook(config, 0, lambda e: None, threading.Event(), out_dir, None)
    else:
        result = trainer.train(config, 0, lambda e: None, threading.Event(), out_dir)
    return {**result.to_dict(), "wall_s": time.perf_counter() - t0}


def runs(args) -> None:
    data_cfg, max_length = dataset(args.dataset, Path(args.datasets), Path(args.workdir))
    print(f"{'run':34} {'acc %':>6} {'F1 %':>6} {'val %':>6} {'trainable':>10} {'train %':>7} {'time s':>7} {'pool':>5}")
    for spec in args.specs:
        label, config = parse_spec(spec, data_cfg, args.max_length or max_length)
        r = run_one(label, config)
        pct = r.get("trainable_pct")
        print(f"{spec[:34]:34} {100 * r['accuracy']:6.2f} {100 * r['f1']:6.2f} {100 * (r.get('val_accuracy') or 0):6.2f} "
              f"{r['trainable_params']:10,d} {pct if pct is not None else float('nan'):7.3f} {r['wall_s']:7.0f} "
              f"{r.get('pooling') or '-':>5}", flush=True)
        record(args.out, {"kind": "run", "dataset": args.dataset, "spec": spec, **{k: r.get(k) for k in (
            "accuracy", "f1", "val_accuracy", "trainable_params", "trainable_pct", "train_time_s", "wall_s",
            "pooling", "lr", "epochs_done", "extra")}})


def record(path: str | None, row: dict) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("features", "runs"))
    ap.add_argument("specs", nargs="*", help="runs: one spec per run, e.g. 'lora r=16 lr=1e-3'")
    ap.add_argument("--dataset", default="ag_news", choices=("ag_news", "ag_news_4k", "imdb", "synthetic"))
    ap.add_argument("--datasets", default="/work/shared/datasets")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "peft-tui-real-data"))
    ap.add_argument("--max-length", type=int, default=0, help="0: the dataset's default")
    ap.add_argument("--out", default=None, help="append each result as a JSON line here")
    args = ap.parse_intermixed_args()
    features(args) if args.mode == "features" else runs(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
