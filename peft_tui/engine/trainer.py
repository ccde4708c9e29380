"""One training run: config in, events out, result back.

    execute(store, run_id, config, sink, cancel)  ->  result dict, or None if it did not finish

`train()` is the loop itself: seed, load data, build and wrap the model, tokenise once, then AdamW
with linear warmup/decay, gradient clipping, dynamic padding over length-grouped batches,
evaluation at epoch ends (and every `eval_every` steps), optional early stopping, and a cancel check
every step. `execute()` wraps it so that any failure is confined to its run: recorded with a
one-line reason, memory released, and the caller (a CLI command or a scheduler worker) goes on.
"""

from __future__ import annotations

import gc
import math
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_tui.config import ConfigError, RunConfig
from peft_tui.engine.events import (
    EvalLogged,
    LogMessage,
    MemorySampled,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    Sink,
    StepLogged,
)

LOG_INTERVAL_S = 0.1  # StepLogged at most ~10 times a second


class Cancelled(Exception):
    pass


class Diverged(Exception):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}: lower the learning rate or use fp32")
        self.step = step


# ------------------------------------------------------------------------------------------------
# devices and precision
# ------------------------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but this machine has no usable CUDA GPU: use --device cpu")
        idx = int(device.split(":")[1]) if ":" in device else 0
        n = torch.cuda.device_count()
        if idx >= n:
            raise ConfigError(f"device {device!r} does not exist: this machine has {n} GPU(s), cuda:0..cuda:{n - 1}")
        return f"cuda:{idx}"
    if device == "mps":
        raise ConfigError("device 'mps' is not supported yet: use cpu")
    return "cpu"


def dev_type_of(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu" if device == "cpu" else device


def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (Intel Sapphire Rapids and later), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: str) -> str:
    """`auto`: bf16 (or fp16 without bf16) on CUDA; on CPU bf16 only with AMX, else fp32.
    Measured (benchmarks/precision.py, MiniLM full fine-tune): on a 16-core AMX Xeon bf16 autocast was
    1.07x faster on ~18-token texts and 1.26x on ~124-token texts; on a 2-core AVX512-BF16 Xeon without
    AMX it was slower than fp32 (README, Performance), so CPUs without AMX keep fp32."""
    import torch

    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_amx() else "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ConfigError("precision fp16 needs a CUDA GPU: use bf16 or fp32 on CPU")
    if precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16: use fp16 or fp32")
    return precision


# ------------------------------------------------------------------------------------------------
# batching
# ------------------------------------------------------------------------------------------------
def tokenize(tokenizer, texts: list[str], max_length: int, pairs: list[str] | None = None) -> list[list[int]]:
    """Token ids, truncated to max_length; with `pairs`, each text and its pair as one sequence pair."""
    out: list[list[int]] = []
    for i in range(0, len(texts), 1024):
        second = pairs[i : i + 1024] if pairs is not None else None
        enc = tokenizer(texts[i : i + 1024], second, truncation=True, max_length=max_length)
        out.extend(enc["input_ids"])
    return out


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length within windows of 50 batches, cut into batches, shuffle the batches.
    Batches hold similar lengths (less padding) while the order stays random."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    window = batch_size * 50
    batches: list[list[int]] = []
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w : w + window], key=lambda i: lengths[i])
        batches.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


PAD_MULTIPLE_CUDA = 8  # on GPU, batch widths are rounded up to a multiple of 8 (see collate)


def collate(ids: list[list[int]], labels: list[int], batch: list[int], pad_id: int, device: str):
    import torch

    width = max(len(ids[i]) for i in batch)
    if device.startswith("cuda") and PAD_MULTIPLE_CUDA > 1:
        # tensor-core friendly shapes, and 8x fewer distinct shapes for the GPU libraries to plan for;
        # on CPU every padded token is paid for in full, so batches stay exactly as wide as needed
        width = -(-width // PAD_MULTIPLE_CUDA) * PAD_MULTIPLE_CUDA
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        seq = ids[i]
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    y = torch.tensor([labels[i] for i in batch], dtype=torch.long)
    return input_ids.to(device), mask.to(device), y.to(device)


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
def macro_f1(y_true: list[int], y_pred: list[int], num_labels: int) -> float:
    f1s = []
    for c in range(num_labels):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == c and p != c)
        if tp + fp + fn == 0:
            continue  # class absent from both: not counted
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 0.0


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    f1: float
    predictions: list[int]


def evaluate(model, ids, labels, num_labels, batch_size, pad_id, device, autocast) -> EvalResult:
    """Batches sorted by length under inference_mode; returns predictions in the original order."""
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
    return EvalResult(total_loss / max(1, len(labels)), acc, macro_f1(labels, preds, num_labels), preds)


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def preflight(config: RunConfig):
    """Check a config before it is queued: values, device, precision, data and model location.
    Raises ConfigError (one line). Returns the loaded DataSplits (callers may print a summary)."""
    from peft_tui.engine import models
    from peft_tui.engine.data import load_splits

    config.validate()
    device = resolve_device(config.device)
    resolve_precision(config.precision, device)
    models.check_model_name(config.model)
    models.check_model_files(config.model, config.max_length, config.trust_remote_code)
    return load_splits(config.data, config.seed)


def train(config: RunConfig, run_id: int, sink: Sink, cancel: threading.Event, out_dir: Path,
          resume_from: Path | None = None) -> dict[str, Any]:
    """Train one run. With `resume_from` (a checkpoint folder), continue from that epoch end: same
    weights, optimizer, scheduler and RNG states, and steps keep counting from the checkpoint."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from peft_tui.engine import checkpoint, models
    from peft_tui.engine.data import load_splits
    from peft_tui.engine.memory import MemoryMonitor
    from peft_tui.engine.methods import get_method
    from peft_tui.engine.weights import count_parameters

    config.validate()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    method = get_method(config.method)
    params = method.resolve(config.params)
    memory = MemoryMonitor(device)

    data = load_splits(config.data, config.seed)
    for note in data.notes:
        sink(LogMessage(run_id, "info", note))
    tokenizer = models.load_tokenizer(config.model, config.trust_remote_code)

    seed_everything(config.seed)
    model = models.load_model(config.model, data.num_labels, config.seed, config.trust_remote_code)
    limit = models.max_positions(model)
    if limit and config.max_length > limit:
        raise ConfigError(f"max_length={config.max_length} is above this model's limit of {limit}: use --set max_length={limit}")
    model = method.apply(model, params)
    model.to(device)
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise ConfigError(f"method {config.method!r} left no parameter to train on this model")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    from peft_tui.engine.tokcache import cached_tokenize, tokenizer_fingerprint

    store_root = Path(out_dir).parent.parent  # out_dir is <store>/runs/<run>: cache in <store>/cache
    cache_dir = store_root / "cache" if (store_root / "runs.db").exists() else None
    fp = tokenizer_fingerprint(tokenizer) if cache_dir is not None else None
    train_ids, val_ids, test_ids = (
        cached_tokenize(cache_dir, fp, tokenize, tokenizer, s.texts, config.max_length, s.pairs)
        for s in (data.train, data.val, data.test)
    )
    lengths = [len(s) for s in train_ids]

    steps_per_epoch = math.ceil(len(train_ids) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(total_steps * config.warmup_ratio)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in n or "layernorm" in n else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        # fused AdamW (one kernel over all parameters): on this 2-core CPU a MiniLM full fine-tune's
        # optimizer step took 18 ms fused against 87 ms foreach (benchmarks, README Performance)
        **({"fused": True} if dev_type_of(device) in ("cpu", "cuda") else {"foreach": True}),
    )

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(dev_type, dtype=amp_dtype)

    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    trainable_params = [p for p in model.parameters() if p.requires_grad]

    sink(RunStarted(run_id, config.display_name, config.method, total_steps, config.epochs, trainable, total,
                    device, precision, len(train_ids), data.num_labels))
    eval_bs = max(64, config.batch_size * 2)

    last_val: dict[int, EvalResult] = {}  # step -> the validation result at that step

    def run_eval(split: str, ids, labels, step: int, epoch: float) -> EvalResult:
        r = evaluate(model, ids, labels, data.num_labels, eval_bs, pad_id, device, autocast)
        sink(EvalLogged(run_id, step, epoch, split, r.loss, r.accuracy, r.f1))
        if split == "val":
            last_val.clear()
            last_val[step] = r
        return r

    rng = random.Random(config.seed)
    step = 0
    samples = tokens = 0
    best_acc, best_state, bad_evals = -1.0, None, 0
    stopped_early = False
    window_loss, window_n = 0.0, 0
    last_log = 0.0
    t0 = time.perf_counter()
    train_time = 0.0  # excludes evaluation
    model.train()
    start_epoch = 0
    if resume_from is not None:
        state = checkpoint.load(resume_from, model, optimizer, scheduler, scaler, rng)
        if state["steps_per_epoch"] != steps_per_epoch:
            raise ConfigError("the data changed since the checkpoint (different number of batches): retry the run")
        start_epoch, step, samples, tokens = state["epoch"], state["step"], state["samples"], state["tokens"]
        best_acc, bad_evals, best_state = state["best_acc"], state["bad_evals"], state["best_state"]
        train_time = state["train_time"]
        sink(LogMessage(run_id, "info", f"resumed from the checkpoint at step {step} (epoch {start_epoch})"))

    def save_checkpoint(epochs_done: int) -> None:
        meta = dict(epoch=epochs_done, step=step, samples=samples, tokens=tokens, best_acc=best_acc,
                    bad_evals=bad_evals, train_time=train_time, steps_per_epoch=steps_per_epoch)
        checkpoint.save(out_dir, model, optimizer, scheduler, scaler, rng, meta, best_state)

    def check_improvement(acc: float) -> bool:
        """Track the best validation accuracy; True when early stopping should stop now."""
        nonlocal best_acc, best_state, bad_evals
        if acc > best_acc:
            best_acc, bad_evals = acc, 0
            if config.patience:
                best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            return False
        bad_evals += 1
        return bool(config.patience) and bad_evals >= config.patience

    for epoch in range(start_epoch, config.epochs):
        t_epoch = time.perf_counter()
        for batch in length_grouped_batches(lengths, config.batch_size, rng):
            if cancel.is_set():
                raise Cancelled(step)
            x, m, y = collate(train_ids, data.train.labels, batch, pad_id, device)
            with autocast():
                logits = model(input_ids=x, attention_mask=m).logits
            loss = F.cross_entropy(logits.float(), y)
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable_params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples += len(batch)
            tokens += int(m.sum()) if dev_type == "cpu" else sum(lengths[i] for i in batch)
            # CPU: .item() is free; CUDA: keep the sum on the device, read it only at log time (no sync per step)
            window_loss = window_loss + (loss.item() if dev_type == "cpu" else loss.detach())
            window_n += 1
            now = time.perf_counter()
            if dev_type == "cpu":
                memory.sample()
            if now - last_log >= LOG_INTERVAL_S or step == total_steps:
                mean = float(window_loss) / window_n
                if not math.isfinite(mean):
                    raise Diverged(step, mean)
                elapsed = train_time + (now - t_epoch)
                sink(StepLogged(run_id, step, step / steps_per_epoch, mean, scheduler.get_last_lr()[0],
                                samples / max(elapsed, 1e-9), elapsed))
                mem = memory.sample()
                sink(MemorySampled(run_id, step, elapsed, device, mem["used_mb"], mem["peak_mb"],
                                   mem["reserved_mb"], mem["device_used_mb"]))
                window_loss, window_n, last_log = 0.0, 0, now
            if config.eval_every and step % config.eval_every == 0 and step % steps_per_epoch != 0:
                train_time += time.perf_counter() - t_epoch
                r = run_eval("val", val_ids, data.val.labels, step, step / steps_per_epoch)
                t_epoch = time.perf_counter()
                if check_improvement(r.accuracy):
                    stopped_early = True
                    break
        train_time += time.perf_counter() - t_epoch
        if stopped_early:
            break
        r = run_eval("val", val_ids, data.val.labels, step, float(epoch + 1))
        if check_improvement(r.accuracy):
            stopped_early = True
            break
        save_checkpoint(epoch + 1)

    if best_state is not None:  # early stopping on: keep the best evaluation's weights
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best_state:
                    p.copy_(best_state[n])
    # the final weights were evaluated at the last epoch end unless early stopping restored older ones
    val = last_val.get(step) if best_state is None else None
    if val is None:
        val = evaluate(model, val_ids, data.val.labels, data.num_labels, eval_bs, pad_id, device, autocast)
    test = run_eval("test", test_ids, data.test.labels, step, step / steps_per_epoch)
    mem = memory.sample()
    method.save(model, out_dir, params)
    checkpoint.discard(out_dir)
    wall = time.perf_counter() - t0

    import peft
    import transformers

    trainable_pct = 100.0 * trainable / total
    result = {
        "run_id": run_id,
        "name": config.display_name,
        "method": config.method,
        "model": config.model,
        "data": data.source,
        "params": params,
        "accuracy": test.accuracy,
        "f1": test.f1,
        "test_loss": test.loss,
        "val_accuracy": val.accuracy,
        "val_f1": val.f1,
        "best_val_accuracy": max(best_acc, val.accuracy),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": trainable_pct,
        "train_time_s": train_time,
        "wall_time_s": wall,
        "samples_per_s": samples / max(train_time, 1e-9),
        "tokens_per_s": tokens / max(train_time, 1e-9),
        "peak_memory_mb": mem["peak_mb"],
        "memory_kind": memory.label,
        "peak_reserved_mb": mem["reserved_mb"],
        "steps": step,
        "epochs_done": step / steps_per_epoch,
        "stopped_early": stopped_early,
        "device": device,
        "precision": precision,
        "lr": config.learning_rate,
        "label_names": data.label_names,
        "sizes": {"train": len(train_ids), "val": len(val_ids), "test": len(test_ids)},
        "efficiency": efficiency(test.accuracy, trainable),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
    return result


def efficiency(accuracy: float, trainable: int) -> float:
    """Accuracy points per million trainable parameters (documented in the README)."""
    return 100.0 * accuracy / max(trainable / 1e6, 1e-6)


def release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if not isinstance(e, ConfigError) else text


def execute(store, run_id: int, config: RunConfig, sink: Sink, cancel: threading.Event | None = None,
            resume: bool = False) -> dict | None:
    """Run one stored run to its end. Returns the result, or None when it failed or was cancelled.
    Never raises for a problem inside the run: it becomes a RunFailed / RunCancelled event.
    With `resume`, continue from the run's checkpoint (see `checkpoint.prepare_resume`)."""
    cancel = cancel or threading.Event()
    result = None
    try:
        out_dir = store.run_dir(run_id)
        resume_from = None
        if resume:
            from peft_tui.engine import checkpoint

            resume_from = checkpoint.find(out_dir)
            if resume_from is None:
                raise ConfigError(f"run {run_id} has no checkpoint to resume from: start it again instead")
        result = train(config, run_id, sink, cancel, out_dir, resume_from=resume_from)
        sink(RunFinished(run_id, result))
    except Cancelled as e:
        sink(RunCancelled(run_id, int(e.args[0]) if e.args else 0))
    except Diverged as e:
        sink(RunFailed(run_id, str(e), status="diverged"))
    except ConfigError as e:
        sink(RunFailed(run_id, str(e)))
    except Exception as e:  # noqa: BLE001 - confine any failure to its run
        msg = one_line(e)
        if "out of memory" in msg.lower():
            msg = f"out of memory: {msg[:120]}; try a smaller batch_size, --precision bf16, or lora"
        sink(RunFailed(run_id, msg))
    finally:
        release_memory()
    return result
