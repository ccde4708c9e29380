"""The `head` method as a real linear probe.

Under `head` the encoder is frozen, so the vector each text gives the classifier never changes while the
head trains. Instead of running the encoder every step of every epoch, the probe:

1. encodes every split once (batched, no gradients), caching the vector the model's final classifier
   layer reads (the pooled vector, see pooling.py);
2. fits that linear layer on the cached training vectors to convergence (L-BFGS on the cross-entropy
   plus an L2 penalty, features standardised for conditioning and folded back into the weights), once
   per weight decay in WEIGHT_DECAYS, strongest first, each fit starting from the previous solution;
3. keeps the weight decay with the best validation accuracy (ties: lower validation loss), writes
   those weights into the model's classifier and saves the head as `head.safetensors`, so predict and
   export rebuild it like any `head` run.

The learning rate, epochs and batch size of the run do not apply (batch size sets the encoding batch).
On architectures whose head has a hidden layer before the final linear one (RoBERTa, DistilBERT) that
layer keeps its seeded initialisation and only the final layer is fitted.

The same fit starts every other method's training under `head_init=probe` (LP-FT, Kumar et al. 2022), on a
sample of the training rows (`probe_rows`) and with its weight decay chosen by cross-validation on them
(`cross_validate`), so that no validation text is encoded:

    run(config, run_id, sink, cancel, out_dir, data) -> RunResult
    fit_head(model, ids, labels, num_labels, pad_id, device, precision, cancel, cache_dir, shared)
        -> (Fit, iterations, FeatureStats)

Features are computed once per (base weights, texts, pooling, precision): `features()` reads and writes
them through the store's cache (data/featcache.py) when the wrapped model gives the base model's
features (SHARES_BASE_FEATURES), so the runs of a `compare` encode the probe's texts once. The encoding
pass sorts the texts by length and runs them in batches of ENCODE_LIMITS under `torch.inference_mode`.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from peft_tui.config import RunConfig
from peft_tui.engine.events import (
    LOG_INTERVAL_S,
    EvalLogged,
    LogMessage,
    MemorySampled,
    RunStarted,
    Sink,
    StepLogged,
)
from peft_tui.engine.result import Cancelled, RunResult, efficiency


def final_linear(model):
    """weights.final_linear, imported when called: weights imports torch, and the estimate reads this
    module's constants in a command that imports no torch (engine/estimate/cost.py)."""
    from peft_tui.engine.weights import final_linear as find

    return find(model)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.methods import Method

# L2 penalties on standardised features, half a decade apart. The best one scales about as 1/train size:
# on AG News (2,000 rows) it was 0.1, on 100 IMDB reviews sklearn's best C meant about 5.
WEIGHT_DECAYS = (10.0, 3.0, 1.0, 0.3, 0.1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
DEFAULT_WEIGHT_DECAY = 1e-3  # when there is no validation split to choose with
MAX_ITER = 500  # L-BFGS iterations per fit; most fits converge well before
# Texts and tokens (rows x padded width) per encoding batch, by device type. Sorted by length, a batch pads
# little. On a CPU a moderate batch is fastest: on the 2-core EPYC, AG News' 2,700 texts took 21.6 s at 64 rows
# / 4,096 tokens, 22.3 s at 32 / 4,096 and 28.8 s at 256 / 16,384 (its caches, not its padding, decide); a
# GPU wants large ones. Fixed per device (not the run's batch_size), so every run there encodes alike and can
# share the cached features; the token bound keeps long texts in smaller batches.
ENCODE_LIMITS = {"cpu": (64, 4096), "cuda": (256, 16384)}


def encode_limits(device: str) -> tuple[int, int]:
    """(texts, tokens) per encoding batch on `device` (ENCODE_LIMITS; the CPU's for any other)."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return ENCODE_LIMITS[kind]


# Methods whose wrapped model gives exactly the base model's features before the first step: LoRA/DoRA
# (B = 0), IA3 (unit scales), adapters (zero up-projection), BitFit and full (the weights themselves),
# and `head`. They share cached features; prefix and prompt tuning change the features and encode their
# own; a peft-json config may do either, so it encodes its own too.
SHARES_BASE_FEATURES = frozenset({"full", "lora", "dora", "ia3", "adapters", "bitfit", "head"})


# LP-FT fits its start on at most this many training rows (see probe_rows): the encoding pass is its whole cost.
# Fewer rows made a weaker start than the cost saved was worth: on the default comparison (synthetic, 1,680
# training rows, 3 epochs) full fine-tuning from a probe on 512 rows ended at 91.4% (weight decay 0.01 chosen,
# the probe at 69.4% on validation), from 1,024 rows at 100% (0.1, 70.6%), from all of them at 100% (0.03,
# 71.7%); on AG News the probe alone scored 85.4% on 512 of its 2,000 rows, 86.5% on 1,024, 87.4% on all.
PROBE_TRAIN_ROWS = 1024
# ... and chooses its weight decay by PROBE_FOLDS-fold cross-validation on that sample, so it encodes no
# validation rows (they were a third of its pass). Replayed on cached features, the choice matched the one made
# on 500 validation rows at 768, 1,024 and all 2,000 AG News rows (0.3, 0.3, 0.1: the same probe test accuracy);
# on 100 IMDB reviews it took 0.3 where validation took 3 (probe test accuracy 69.4% against 69.7%, 350 rows).
# Folds cost fits, not encoding: 1.4 s for 2 folds at 1,024 rows, 3.0 s for 4; a single held-out quarter was
# cheaper but chose 0.03-1 on AG News (0.7-0.9 points lower).
PROBE_FOLDS = 2
# every class keeps at least this many of its rows in the sample (or all it has)
PROBE_MIN_PER_CLASS = 8
# head_init=auto: the probe fit starts a run of at most this many optimizer steps (see resolve_head_init).
# Measured (README, "Where the classifier starts"): the probe lifted full fine-tuning and LoRA by 14-16
# points at 12 steps (IMDB) and full fine-tuning by 10 points at 53 steps (synthetic, 1 epoch); at 157 and
# 189 steps it was within noise (LoRA +0.1 and +0.4, full -1.6), at 471 steps it cost 0.5-1.5 points.
AUTO_PROBE_MAX_STEPS = 200


def resolve_head_init(head_init: str, total_steps: int) -> str:
    """`auto` made concrete: "probe" for a short run (at most AUTO_PROBE_MAX_STEPS steps), where starting
    from the fitted head is much of what the run achieves, "random" for a longer one, where the steps
    train the head on their own and the probe's encoding is a cost with no gain (README, head_init)."""
    if head_init != "auto":
        return head_init
    return "probe" if total_steps <= AUTO_PROBE_MAX_STEPS else "random"


@dataclass
class FeatureStats:
    """How a run's features were obtained: texts encoded and texts read from the cache, and seconds."""

    encoded: int = 0
    cached: int = 0
    seconds: float = 0.0
    split_seconds: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.encoded:
            return f"features of {self.cached} texts read from the cache"
        if self.cached:
            return f"{self.encoded} texts encoded, {self.cached} read from the cache, in {self.seconds:.1f}s"
        return f"{self.encoded} texts encoded in {self.seconds:.1f}s"


def length_sorted_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices of the rows shortest first, cut into batches of at most `batch_size` rows and (when given)
    `max_tokens` rows x the batch's longest row (a single row may exceed it)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (
                max_tokens is None or (len(batches[-1]) + 1) * max(1, lengths[i]) <= max_tokens):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def encode(model, layer, ids: list[list[int]], pad_id: int, batch_size: int, device: str, autocast,
           cancel: threading.Event, on_batch=None, max_tokens: int | None = None):
    """The input of `layer` (float32 [len(ids), hidden]) for every token sequence, in order, computed in
    `length_sorted_batches` under inference mode. Where `layer` sees every position (decoder `score`
    heads), the last real one is kept, which is the one those models classify from."""
    import torch

    from peft_tui.engine.batching import collate

    captured = []

    def keep_input(module, args):
        captured.append(args[0])

    hook = layer.register_forward_pre_hook(keep_input)
    out = torch.zeros(len(ids), layer.in_features)
    model.eval()
    try:
        with torch.inference_mode():
            for batch in length_sorted_batches([len(s) for s in ids], batch_size, max_tokens):
                if cancel.is_set():
                    raise Cancelled(0)
                x, m, _ = collate(ids, [0] * len(ids), batch, pad_id, device)
                captured.clear()
                with autocast():
                    model(input_ids=x, attention_mask=m)
                feats = captured[-1]
                if feats.dim() == 3:
                    from peft_tui.engine.pooling import pool

                    feats = pool(feats, m, "last")
                out[batch] = feats.float().cpu()
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        hook.remove()
    return out


def features(model, layer, ids: dict[str, list[list[int]]], pad_id: int, device: str, precision: str,
             cancel: threading.Event, *, cache_dir: Path | None = None, shared: bool = False,
             on_batch=None) -> tuple[dict[str, torch.Tensor], FeatureStats]:
    """`encode` every split of `ids` (split -> token sequences). With `shared` (the model gives the base
    model's features: SHARES_BASE_FEATURES, built with `fingerprint=True`) and a `cache_dir`, each split is
    read from / written to the feature cache. Returns (split -> features, how they were obtained)."""
    from peft_tui.engine.data.featcache import cached_features
    from peft_tui.engine.device import autocast_for, device_type
    from peft_tui.engine.models import FINGERPRINT_ATTR
    from peft_tui.engine.pooling import pooling_of

    fingerprint = getattr(model, FINGERPRINT_ATTR, None) if shared else None
    rows, tokens = encode_limits(device)
    context = f"{pooling_of(model)}\0{precision}\0{device_type(device)}\0{rows}\0{tokens}"
    autocast = autocast_for(precision, device)
    out, stats = {}, FeatureStats()
    for split, seqs in ids.items():
        t = time.perf_counter()
        def encode_split(seqs: list[list[int]] = seqs):
            return encode(model, layer, seqs, pad_id, rows, device, autocast, cancel, on_batch, tokens)

        out[split], hit = cached_features(cache_dir, fingerprint, context, seqs, encode_split)
        if hit:
            stats.cached += len(seqs)
        else:
            stats.encoded += len(seqs)
        stats.split_seconds[split] = time.perf_counter() - t
    stats.seconds = sum(stats.split_seconds.values())
    return out, stats


@contextlib.contextmanager
def one_thread():
    """Torch on one CPU thread for the fit: each step is a few small matrix products, where thread
    hand-offs cost more than they save (on the shared 2-core box, two threads took 19 s for a fit that
    one thread did in 0.5 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_linear(x, y, num_classes: int, weight_decay: float, with_bias: bool, init=None):
    """Multinomial logistic regression by L-BFGS: mean cross-entropy + weight_decay * ||W||^2.
    Returns (W [classes, features], b [classes] or None, iterations)."""
    with one_thread():
        return _lbfgs(x, y, num_classes, weight_decay, with_bias, init)


def _lbfgs(x, y, num_classes: int, weight_decay: float, with_bias: bool, init):
    import torch
    import torch.nn.functional as F

    w = (init[0].clone() if init is not None else torch.zeros(num_classes, x.shape[1])).requires_grad_(True)
    b = None
    if with_bias:
        b = (init[1].clone() if init is not None else torch.zeros(num_classes)).requires_grad_(True)
    params = [w] + ([b] if b is not None else [])
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=MAX_ITER, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        logits = x @ w.T + (b if b is not None else 0.0)
        loss = F.cross_entropy(logits, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), (b.detach() if b is not None else None), opt.state[w]["n_iter"]


def scores(logits, labels: list[int], num_labels: int) -> tuple[float, float, float]:
    """(cross-entropy, accuracy, macro F1) of logits against labels; zeros for an empty split."""
    import torch
    import torch.nn.functional as F

    from peft_tui.engine.evaluation import macro_f1

    if not labels:
        return 0.0, 0.0, 0.0
    y = torch.tensor(labels)
    pred = logits.argmax(-1)
    loss = float(F.cross_entropy(logits, y))
    return loss, float((pred == y).float().mean()), macro_f1(labels, pred.tolist(), num_labels)


@dataclass
class Fit:
    weight_decay: float
    w: torch.Tensor
    b: torch.Tensor | None
    val_loss: float
    val_accuracy: float
    val_f1: float


def choose_weight_decay(x: dict, labels: dict, num_labels: int, grid, with_bias: bool, cancel: threading.Event,
                        on_fit) -> tuple[Fit, int]:
    """Fit once per weight decay in `grid` (strongest first, each from the previous solution) on x["train"];
    keep the best validation accuracy (ties: lower validation loss). `on_fit(step, train_loss, fit)` reports
    each fit. Returns (best fit, total L-BFGS iterations)."""
    import torch

    def logits(split, w, b):
        return x[split] @ w.T + (b if b is not None else 0.0)

    y_train = torch.tensor(labels["train"])
    best, solution, iterations = None, None, 0
    for step, wd in enumerate(grid, start=1):
        if cancel.is_set():
            raise Cancelled(step - 1)
        with one_thread():
            w, b, n = fit_linear(x["train"], y_train, num_labels, wd, with_bias, solution)
            fit = Fit(wd, w, b, *scores(logits("val", w, b), labels["val"], num_labels))
            train_loss = scores(logits("train", w, b), labels["train"], num_labels)[0]
        solution, iterations = (w, b), iterations + n
        on_fit(step, train_loss, fit)
        if best is None or (fit.val_accuracy, -fit.val_loss) > (best.val_accuracy, -best.val_loss):
            best = fit
    assert best is not None  # the grid is never empty
    return best, iterations


def fit_layer(layer, features: dict, labels: dict, num_labels: int, grid, cancel: threading.Event,
              on_fit=None, folds: int = 0) -> tuple[Fit, int]:
    """Fit the linear `layer` on its cached inputs `features` (split -> float32 [n, in_features]; "train",
    and "val" to choose with) and write the result into it: standardise on the training split (centre only
    where the layer has a bias to absorb the shift), `choose_weight_decay` over `grid`, then fold the
    standardisation back into the weights, W x_std + b = (W / sd) x + (b - (W / sd) mu).
    With `folds` > 1 the weight decay is chosen by `cross_validate` on the training split instead ("val" is
    not needed), then fitted on all of it; the fit's val_* scores are then the cross-validated ones.
    Returns (best fit on standardised features, total L-BFGS iterations)."""
    import torch

    with_bias = layer.bias is not None
    x_train = features["train"]
    mu = x_train.mean(0) if with_bias else torch.zeros(x_train.shape[1])
    sd = x_train.std(0, unbiased=False).clamp(min=1e-6) if len(x_train) > 1 else torch.ones(x_train.shape[1])
    x = {k: (v - mu) / sd for k, v in features.items()}
    on_fit = on_fit or (lambda step, train_loss, fit: None)
    if folds > 1:
        best, iterations = cross_validate(x["train"], labels["train"], num_labels, grid, with_bias, cancel, folds)
    else:
        best, iterations = choose_weight_decay(x, labels, num_labels, grid, with_bias, cancel, on_fit)
    weight = best.w / sd
    with torch.no_grad():
        layer.weight.copy_(weight.to(layer.weight.dtype))
        if with_bias and best.b is not None:
            layer.bias.copy_((best.b - weight @ mu).to(layer.bias.dtype))
    return best, iterations


def fold_rows(labels: list[int], folds: int) -> list[list[int]]:
    """`folds` disjoint sets of row indices covering `labels`, each class dealt out in turn (seeded shuffle)
    so that every fold holds about its share of every class. Fewer folds when there are fewer rows."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(0)
    out: list[list[int]] = [[] for _ in range(max(1, min(folds, len(labels))))]
    k = 0
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        for i in members:
            out[k % len(out)].append(i)
            k += 1
    return [sorted(f) for f in out]


def cross_validate(x, labels: list[int], num_labels: int, grid, with_bias: bool, cancel: threading.Event,
                   folds: int) -> tuple[Fit, int]:
    """Choose the weight decay of `grid` with the best mean held-out accuracy over `fold_rows` (ties: lower
    held-out loss, then the stronger penalty), then fit it on all rows of `x` (standardised features).
    With a single row or a one-value grid there is nothing to choose: that value (DEFAULT_WEIGHT_DECAY for a
    single row) is fitted. Returns (the fit on all rows, with the cross-validated scores as its val_* scores, total L-BFGS
    iterations)."""

    parts = fold_rows(labels, folds)
    iterations = 0
    chosen = grid[0] if len(grid) == 1 else DEFAULT_WEIGHT_DECAY  # one value, or a single row
    held = None
    if len(parts) > 1 and len(grid) > 1:
        totals = {wd: [0.0, 0.0, 0.0] for wd in grid}  # summed held-out (loss, accuracy, f1) x rows held out

        def add(step: int, train_loss: float, fit: Fit) -> None:
            n = len(part)
            t = totals[fit.weight_decay]
            t[0], t[1], t[2] = t[0] + fit.val_loss * n, t[1] + fit.val_accuracy * n, t[2] + fit.val_f1 * n

        for part in parts:
            inside = sorted(set(range(len(labels))) - set(part))
            split = {"train": x[inside], "val": x[part]}
            ys = {"train": [labels[i] for i in inside], "val": [labels[i] for i in part]}
            _, n = choose_weight_decay(split, ys, num_labels, grid, with_bias, cancel, add)
            iterations += n
        chosen = max(grid, key=lambda wd: (totals[wd][1], -totals[wd][0], wd))
        held = [v / len(labels) for v in totals[chosen]]
    fit, n = choose_weight_decay({"train": x, "val": x[:0]}, {"train": labels, "val": []}, num_labels, (chosen,),
                                 with_bias, cancel, lambda step, train_loss, fit: None)
    if held is not None:
        fit = Fit(fit.weight_decay, fit.w, fit.b, held[0], held[1], held[2])
    return fit, iterations + n


def fit_head(model, ids: list[list[int]], labels: list[int], num_labels: int, pad_id: int, device: str,
             precision: str, cancel: threading.Event, cache_dir: Path | None = None,
             shared: bool = False) -> tuple[Fit, int, FeatureStats]:
    """LP-FT's first step (a training run's `head_init=probe`): encode `probe_rows` of the training token
    sequences `ids` once through `model` as it is, already wrapped by its method (or read them from the
    feature cache, see `features`), and fit its final classifier layer on them as the probe does, the weight
    decay chosen by PROBE_FOLDS-fold cross-validation on the same rows (`fit_layer`). No validation row is
    encoded. Returns (fit: its val_* scores are the cross-validated ones, L-BFGS iterations, how the features
    were obtained)."""
    layer = final_linear(model)
    rows = probe_rows(labels)
    feats, stats = features(model, layer, {"train": [ids[i] for i in rows]}, pad_id, device, precision, cancel,
                            cache_dir=cache_dir, shared=shared)
    fit, iterations = fit_layer(layer, feats, {"train": [labels[i] for i in rows]}, num_labels, WEIGHT_DECAYS,
                                cancel, folds=PROBE_FOLDS)
    return fit, iterations, stats


def probe_rows(labels: list[int]) -> list[int]:
    """The training rows LP-FT fits its start on: all of them up to PROBE_TRAIN_ROWS, else a fixed sample of
    about that many, drawn per class in proportion to its size, every class keeping at least
    PROBE_MIN_PER_CLASS rows (or all it has). Seeded: every run of the same data picks the same rows and
    shares their cached features."""
    n = len(labels)
    if n <= PROBE_TRAIN_ROWS:
        return list(range(n))
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(0)
    picked: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        share = max(PROBE_MIN_PER_CLASS, round(len(members) * PROBE_TRAIN_ROWS / n))
        picked += rng.sample(members, min(len(members), share))
    return sorted(picked)


def run(config: RunConfig, run_id: int, sink: Sink, cancel: threading.Event, out_dir: Path,
        data: DataSplits | None, *, method: Method, cache_dir: Path | None = None) -> RunResult:
    """Train a `head` run as a linear probe on cached features (see the module docstring). `data`: splits
    already loaded by the caller (else loaded from `config.data`). `method`: the run's method object (the
    `head` method hands itself, so the probe never looks it up). `cache_dir`: the store's cache (token ids
    and features; None: none)."""
    import torch

    from peft_tui.engine import models
    from peft_tui.engine.batching import pad_id_of, tokenize_splits
    from peft_tui.engine.data import load_splits
    from peft_tui.engine.device import resolve_device, resolve_precision
    from peft_tui.engine.memory import MemoryMonitor
    from peft_tui.engine.pooling import pooling_of
    from peft_tui.engine.weights import count_parameters

    t0 = time.perf_counter()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    params = method.resolve(config.params)
    memory = MemoryMonitor(device)
    if data is None:
        data = load_splits(config.data, config.seed)
    for note in data.notes:
        sink(LogMessage(run_id, "info", note))
    tokenizer = models.load_tokenizer(config.model, config.trust_remote_code)
    shared = config.method in SHARES_BASE_FEATURES
    model = models.build_model(config, method, params, data.num_labels, device, fingerprint=shared)
    layer = final_linear(model)
    trainable, total = count_parameters(model)

    grid = WEIGHT_DECAYS if len(data.val) else (DEFAULT_WEIGHT_DECAY,)
    splits = {"train": data.train, "val": data.val, "test": data.test}
    sink(RunStarted(run_id, config.display_name, config.method, len(grid), 1, trainable, total, device,
                    precision, len(data.train), data.num_labels))
    sink(LogMessage(run_id, "info", f"linear probe: encoding {sum(len(s) for s in splits.values())} texts once "
                                    f"with the frozen encoder ({pooling_of(model)} pooling)"))

    # 1. encode every split once (or read the features another run of this store encoded)
    last_sample = 0.0

    def sample_memory(n: int) -> None:
        nonlocal last_sample
        now = time.perf_counter()
        if now - last_sample >= LOG_INTERVAL_S:
            mem = memory.sample()
            sink(MemorySampled(run_id, 0, now - t0, device, mem["used_mb"], mem["peak_mb"], mem["reserved_mb"],
                               mem["device_used_mb"]))
            last_sample = now

    ids = dict(zip(splits, tokenize_splits(tokenizer, data, config.max_length, cache_dir)))
    features_, stats = features(model, layer, ids, pad_id_of(tokenizer), device, precision, cancel,
                                cache_dir=cache_dir, shared=shared, on_batch=sample_memory)
    encode_s = stats.split_seconds["train"]  # the training time: encoding the training split, then the fit
    tokens = sum(len(s) for s in ids["train"])

    # 2. fit per weight decay on standardised features, keep the best on validation, write it into the layer
    t_fit = time.perf_counter()

    def on_fit(step: int, train_loss: float, fit: Fit) -> None:
        elapsed = encode_s + time.perf_counter() - t_fit
        sink(StepLogged(run_id, step, step / len(grid), train_loss, 1.0, len(data.train) / elapsed, elapsed))
        sink(EvalLogged(run_id, step, step / len(grid), "val", fit.val_loss, fit.val_accuracy, fit.val_f1))

    labels = {name: split.labels for name, split in splits.items()}
    best, iterations = fit_layer(layer, features_, labels, data.num_labels, grid, cancel, on_fit)
    fit_s = time.perf_counter() - t_fit
    with torch.no_grad():
        test_logits = layer(features_["test"].to(layer.weight.dtype)).float()
    test_loss, test_acc, test_f1 = scores(test_logits, data.test.labels, data.num_labels)
    sink(EvalLogged(run_id, len(grid), 1.0, "test", test_loss, test_acc, test_f1))
    chosen = "chosen on the validation split" if len(grid) > 1 else "the default: no validation split"
    sink(LogMessage(run_id, "info", f"linear probe: weight decay {best.weight_decay:g}, {chosen} ({iterations} "
                                    f"L-BFGS iterations, {stats.describe()}, fit {fit_s:.2f}s)"))

    # 3. save
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    method.save(model, Path(out_dir), params)

    mem = memory.sample()
    train_time = encode_s + fit_s
    return RunResult(
        run_id=run_id, name=config.display_name, method=config.method, model=config.model, data=data.source,
        params=params, accuracy=test_acc, f1=test_f1, test_loss=test_loss, val_accuracy=best.val_accuracy,
        val_f1=best.val_f1, best_val_accuracy=best.val_accuracy, trainable_params=trainable, total_params=total,
        trainable_pct=100.0 * trainable / total, train_time_s=train_time, wall_time_s=time.perf_counter() - t0,
        samples_per_s=len(data.train) / max(train_time, 1e-9), tokens_per_s=tokens / max(train_time, 1e-9),
        peak_memory_mb=mem["peak_mb"], memory_kind=memory.label, peak_reserved_mb=mem["reserved_mb"],
        steps=len(grid), epochs_done=1.0, device=device, precision=precision, lr=None, seed=config.seed,
        pooling=pooling_of(model), label_names=data.label_names,
        sizes={name: len(split) for name, split in splits.items()},
        efficiency=efficiency(test_acc, trainable), versions=models.library_versions(),
        extra={"probe_weight_decay": best.weight_decay, "encode_time_s": stats.seconds, "fit_time_s": fit_s,
               "lbfgs_iterations": iterations, "texts_encoded": stats.encoded, "texts_cached": stats.cached},
    )
