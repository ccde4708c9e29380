"""peft-tui's engine against the script a user would otherwise write: `transformers.Trainer` + peft
with `DataCollatorWithPadding`. Same model (embedded MiniLM), same splits, same wrapped model
(our `Method.apply`, so LoRA is peft's and adapters are ours in both), same hyper-parameters,
epochs and seed; both evaluate on validation at each epoch end and on test at the end.

Prints wall time (training + evaluations + epoch-end checkpoints, model loading and tokenising
excluded), samples/s and test accuracy of each, and the speed ratio. Both save a resumable checkpoint
(weights, optimizer, scheduler, RNG) at each epoch end: the engine always does, so the Trainer is set
to `save_strategy="epoch"`. A short untimed warm-up run first, so one-time costs (CUDA context, BLAS
and kernel initialisation) fall on neither side. Target: engine >= 1.25x faster, accuracy within 0.5 points.
Usage: python benchmarks/engine_vs_trainer.py [--methods lora,full,adapters] [--data FILE] [--limit N]
       [--epochs E] [--size N] [--dataset ag_news_4k] [--whole]

--whole times whole commands instead, as a user waits for them (issue 19): `peft-tui run` from spawn to
exit, at the defaults (fp32, as the Trainer), with --head-init random, and at the defaults with the default
precision too (`auto`: bf16 where the machine's calibration measures it faster), against the Trainer script in its own fresh process
(imports, loading, tokenising, training, evaluation). Target: >= 2.0x at the defaults for LoRA and full
fine-tuning, e.g. `--dataset ag_news_4k --epochs 1 --whole` (AG News, 2,000 training rows).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_engine(cfg):
    from peft_tui.engine.store import Store
    from peft_tui.engine.trainer import execute

    store = Store(tempfile.mkdtemp(prefix="bench-"))
    rid = store.create_run(cfg)
    result = execute(store, rid, cfg, store, threading.Event())
    if result is None:
        raise SystemExit(f"engine run failed: {store.get(rid)['error']}")
    return result.wall_time_s, result.accuracy, result.sizes["train"] * result.epochs_done


def run_trainer(cfg):
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from peft_tui.engine import models
    from peft_tui.engine.data import load_splits
    from peft_tui.engine.methods import get_method, learning_rate

    data = load_splits(cfg.data, cfg.seed)
    tok = models.load_tokenizer(cfg.model)
    torch.manual_seed(cfg.seed)
    model = models.load_model(cfg.model, data.num_labels, cfg.seed)
    method = get_method(cfg.method)
    model = method.apply(model, method.resolve(cfg.params))

    def encode(split):
        enc = tok(split.texts, truncation=True, max_length=cfg.max_length)
        return [{"input_ids": ids, "attention_mask": m, "labels": y}
                for ids, m, y in zip(enc["input_ids"], enc["attention_mask"], split.labels)]

    train, val, test = encode(data.train), encode(data.val), encode(data.test)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-"), num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=max(64, 2 * cfg.batch_size),
        learning_rate=learning_rate(cfg), weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="linear", max_grad_norm=cfg.grad_clip, seed=cfg.seed, eval_strategy="epoch",
        save_strategy="epoch", save_only_model=False, report_to=[], logging_steps=50, use_cpu=cfg.device == "cpu" or not torch.cuda.is_available(),
        dataloader_num_workers=0, disable_tqdm=True,
    )

    def metrics(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics)
    t0 = time.perf_counter()
    trainer.train()
    acc = trainer.evaluate(test)["eval_accuracy"]
    return time.perf_counter() - t0, acc, len(train) * cfg.epochs


def data_config(a):
    from peft_tui.config import DataConfig

    if a.dataset:  # a named real set (benchmarks/real_data.py): AG News 2,000 training rows and so on
        from real_data import dataset

        return dataset(a.dataset, Path(a.datasets), Path(tempfile.gettempdir()) / "peft-tui-real-data")[0]
    return DataConfig(source=a.data, size=a.size, limit=a.limit)


def cli_data_args(data) -> list[str]:
    """`peft-tui run` options for a DataConfig."""
    args = ["--data", data.source]
    for key in ("val_source", "test_source"):
        if getattr(data, key):
            args += ["--set", f"data.{key}={getattr(data, key)}"]
    for key in ("val_fraction", "test_fraction", "size", "limit"):
        args += ["--set", f"data.{key}={getattr(data, key)}"]
    return args


def whole_engine(cfg, head_init: str | None, precision: str | None = "fp32") -> tuple[float, float, int]:
    """`peft-tui run` as a user types it, timed from spawn to exit: imports, data, summary, estimate,
    worker, loading, the probe fit (unless head_init=random), training, evaluation, printing. fp32 as the
    Trainer's script, unless `precision` is None: the default (`auto`, bf16 where it measures faster)."""
    import json
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("peft-tui"))
    cmd = [exe, "run", "--method", cfg.method, "--model", cfg.model, *cli_data_args(cfg.data), "--epochs",
           str(cfg.epochs), *(["--precision", precision] if precision else []), "--device", cfg.device, "--json",
           "--store", tempfile.mkdtemp(prefix="bench-"), *(["--head-init", head_init] if head_init else [])]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"peft-tui run failed: {out.stderr[-1500:]}")
    r = json.loads(out.stdout)["result"]
    return wall, r["accuracy"], r["sizes"]["train"] * cfg.epochs


def whole_trainer(a, method: str) -> tuple[float, float, int]:
    """The Trainer script in a fresh process, timed from spawn to exit (imports, loading, tokenising,
    training, evaluation)."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--trainer-only", "--methods", method, *a.passthrough]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"Trainer script failed: {out.stderr[-1500:]}")
    acc, n = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, acc, n


def main() -> None:
    import json
    import sys

    from peft_tui.config import DataConfig, RunConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--dataset", default="", help="a named set of benchmarks/real_data.py, e.g. ag_news_4k")
    ap.add_argument("--datasets", default="/work/shared/datasets")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--size", type=int, default=2400)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda:0 (the Trainer follows)")
    ap.add_argument("--whole", action="store_true",
                    help="time whole commands (`peft-tui run` and the Trainer script, each a fresh process), "
                         "at the defaults and with --head-init random")
    ap.add_argument("--trainer-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.passthrough = []  # what the Trainer's own process is given, less --whole and --methods (it gets one)
    argv = iter(sys.argv[1:])
    for x in argv:
        if x == "--methods":
            next(argv, None)
        elif x != "--whole" and not x.startswith("--methods="):
            a.passthrough.append(x)
    data = data_config(a)
    if a.trainer_only:
        cfg = RunConfig(method=a.methods, model=a.model, data=data, epochs=a.epochs, precision="fp32",
                        device=a.device)
        _, acc, n = run_trainer(cfg)
        print(json.dumps([acc, n]))
        return
    print(f"load average {os.getloadavg()[0]:.2f}; {a.model}, data {a.dataset or a.data}, {a.epochs} epochs, fp32",
          flush=True)
    if not a.whole:
        run_engine(RunConfig(method=a.methods.split(",")[0], model=a.model, data=DataConfig(size=200), epochs=1,
                             precision="fp32", device=a.device))  # warm-up, untimed
    print(f"{'method':9} {'runner':22} {'wall s':>8} {'samples/s':>10} {'test acc %':>10}")
    for m in a.methods.split(","):
        cfg = RunConfig(method=m, model=a.model, data=data, epochs=a.epochs, precision="fp32", device=a.device)
        if a.whole:
            theirs = whole_trainer(a, m)
            runs = {"peft-tui (defaults)": whole_engine(cfg, None),
                    "peft-tui (head random)": whole_engine(cfg, "random"),
                    "peft-tui (precision auto)": whole_engine(cfg, None, precision=None)}
        else:
            theirs = run_trainer(cfg)
            runs = {"peft-tui": run_engine(cfg)}
        for name, (wall, acc, n) in (*runs.items(), ("Trainer", theirs)):
            print(f"{m:9} {name:22} {wall:8.1f} {n / wall:10.1f} {100 * acc:10.2f}")
        for name, ours in runs.items():
            print(f"{m:9} {name}: speed ratio (Trainer time / peft-tui time) {theirs[0] / ours[0]:.2f}x, "
                  f"accuracy difference {100 * (ours[1] - theirs[1]):+.2f} points", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
