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

    run(config, run_id, sink, cancel, out_dir, data) -> RunResult
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from peft_tui.config import RunConfig
from peft_tui.engine.events import EvalLogged, LogMessage, MemorySampled, RunStarted, Sink, StepLogged
from peft_tui.engine.result import RunResult, efficiency
from peft_tui.errors import ConfigError

WEIGHT_DECAYS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)  # L2 on standardised features
DEFAULT_WEIGHT_DECAY = 1e-3  # when there is no validation split to choose with
MAX_ITER = 500  # L-BFGS iterations per fit; most fits converge well before


def final_linear(model):
    """The last nn.Linear of the model's classification head: the layer the probe fits."""
    import torch.nn as nn

    from peft_tui.engine.weights import head_module_names

    linears = [m for name in head_module_names(model) for m in model.get_submodule(name).modules()
               if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"head found no linear classifier layer on this {model.config.model_type!r} model: use lora")
    return linears[-1]


def encode(model, layer, ids: list[list[int]], pad_id: int, batch_size: int, device: str, autocast,
           cancel: threading.Event, on_batch=None):
    """The input of `layer` (float32 [len(ids), hidden]) for every token sequence, in order.
    Where `layer` sees every position (decoder `score` heads), the last real one is kept, which is
    the one those models classify from."""
    import torch

    from peft_tui.engine import trainer

    captured = []

    def keep_input(module, args):
        captured.append(args[0])

    hook = layer.register_forward_pre_hook(keep_input)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(ids), layer.in_features)
    model.eval()
    try:
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                if cancel.is_set():
                    raise trainer.Cancelled(0)
                batch = order[b : b + batch_size]
                x, m, _ = trainer.collate(ids, [0] * len(ids), batch, pad_id, device)
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


def fit_linear(x, y, num_classes: int, weight_decay: float, with_bias: bool, init=None):
    """Multinomial logistic regression by L-BFGS: mean cross-entropy + weight_decay * ||W||^2.
    Returns (W [classes, features], b [classes] or None, iterations)."""
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

    from peft_tui.engine.trainer import macro_f1

    if not labels:
        return 0.0, 0.0, 0.0
    y = torch.tensor(labels)
    pred = logits.argmax(-1)
    loss = float(F.cross_entropy(logits, y))
    return loss, float((pred == y).float().mean()), macro_f1(labels, pred.tolist(), num_labels)


def run(config: RunConfig, run_id: int, sink: Sink, cancel: threading.Event, out_dir: Path, data) -> RunResult:
    """Train a `head` run as a linear probe on cached features (see the module docstring)."""
    import peft
    import torch
    import transformers

    from peft_tui.engine import models, trainer
    from peft_tui.engine.memory import MemoryMonitor
    from peft_tui.engine.methods import get_method
    from peft_tui.engine.pooling import pooling_of
    from peft_tui.engine.weights import count_parameters

    t0 = time.perf_counter()
    device = trainer.resolve_device(config.device)
    precision = trainer.resolve_precision(config.precision, device)
    method = get_method(config.method)
    params = method.resolve(config.params)
    memory = MemoryMonitor(device)
    tokenizer = models.load_tokenizer(config.model, config.trust_remote_code)
    trainer.seed_everything(config.seed)
    model = models.load_model(config.model, data.num_labels, config.seed, config.trust_remote_code, config.pooling)
    model = method.apply(model, params).to(device)
    layer = final_linear(model)
    trainable, total = count_parameters(model)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        import contextlib

        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=amp_dtype)

    grid = WEIGHT_DECAYS if len(data.val) else (DEFAULT_WEIGHT_DECAY,)
    sink(RunStarted(run_id, config.display_name, config.method, len(grid), 1, trainable, total, device,
                    precision, len(data.train), data.num_labels))
    sink(LogMessage(run_id, "info", f"linear probe: encoding {len(data.train) + len(data.val) + len(data.test)} "
                                    f"texts once with the frozen encoder ({pooling_of(model)} pooling)"))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch_size = max(64, config.batch_size * 2)
    last_sample = 0.0

    def sample_memory(n: int) -> None:
        nonlocal last_sample
        now = time.perf_counter()
        if now - last_sample >= trainer.LOG_INTERVAL_S:
            mem = memory.sample()
            sink(MemorySampled(run_id, 0, now - t0, device, mem["used_mb"], mem["peak_mb"], mem["reserved_mb"],
                               mem["device_used_mb"]))
            last_sample = now

    features = {}
    t_encode = time.perf_counter()
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        ids = trainer.tokenize(tokenizer, split.texts, config.max_length, split.pairs)
        features[name] = encode(model, layer, ids, pad_id, batch_size, device, autocast, cancel, sample_memory)
        if name == "train":
            train_encode_s = time.perf_counter() - t_encode
            tokens = sum(len(s) for s in ids)
    encode_s = time.perf_counter() - t_encode

    # standardise on the training split (centre only where the layer has a bias to absorb it)
    with_bias = layer.bias is not None
    x_train = features["train"]
    mu = x_train.mean(0) if with_bias else torch.zeros(x_train.shape[1])
    sd = x_train.std(0, unbiased=False).clamp(min=1e-6) if len(x_train) > 1 else torch.ones(x_train.shape[1])
    std = {k: (v - mu) / sd for k, v in features.items()}
    y_train = torch.tensor(data.train.labels)

    def logits(split: str, w, b):
        return std[split] @ w.T + (b if b is not None else 0.0)

    t_fit = time.perf_counter()
    best = None  # ((val accuracy, -val loss), weight decay, w, b, val F1)
    solution, iterations = None, 0
    for step, wd in enumerate(grid, start=1):
        if cancel.is_set():
            raise trainer.Cancelled(step - 1)
        w, b, n = fit_linear(std["train"], y_train, data.num_labels, wd, with_bias, solution)
        solution, iterations = (w, b), iterations + n
        train_loss, _, _ = scores(logits("train", w, b), data.train.labels, data.num_labels)
        elapsed = train_encode_s + time.perf_counter() - t_fit
        sink(StepLogged(run_id, step, step / len(grid), train_loss, 1.0, len(data.train) / elapsed, elapsed))
        val_loss, val_acc, val_f1 = scores(logits("val", w, b), data.val.labels, data.num_labels)
        sink(EvalLogged(run_id, step, step / len(grid), "val", val_loss, val_acc, val_f1))
        if best is None or (val_acc, -val_loss) > best[0]:
            best = ((val_acc, -val_loss), wd, w, b, val_f1)
    fit_s = time.perf_counter() - t_fit
    (val_acc, _), wd, w, b, val_f1 = best

    # fold the standardisation into the layer: W x_std + b = (W / sd) x + (b - (W / sd) mu)
    weight = w / sd
    with torch.no_grad():
        layer.weight.copy_(weight.to(layer.weight.dtype))
        if with_bias:
            layer.bias.copy_((b - weight @ mu).to(layer.bias.dtype))
    test_loss, test_acc, test_f1 = scores(logits("test", w, b), data.test.labels, data.num_labels)
    steps = len(grid)
    sink(EvalLogged(run_id, steps, 1.0, "test", test_loss, test_acc, test_f1))
    chosen = "chosen on the validation split" if len(grid) > 1 else "the default: no validation split"
    sink(LogMessage(run_id, "info", f"linear probe: weight decay {wd:g}, {chosen} "
                                    f"({iterations} L-BFGS iterations, encoding {encode_s:.1f}s, fit {fit_s:.2f}s)"))

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    method.save(model, Path(out_dir), params)
    mem = memory.sample()
    train_time = train_encode_s + fit_s
    return RunResult(
        run_id=run_id, name=config.display_name, method=config.method, model=config.model, data=data.source,
        params=params, accuracy=test_acc, f1=test_f1, test_loss=test_loss, val_accuracy=val_acc, val_f1=val_f1,
        best_val_accuracy=val_acc, trainable_params=trainable, total_params=total,
        trainable_pct=100.0 * trainable / total, train_time_s=train_time, wall_time_s=time.perf_counter() - t0,
        samples_per_s=len(data.train) / max(train_time, 1e-9), tokens_per_s=tokens / max(train_time, 1e-9),
        peak_memory_mb=mem["peak_mb"], memory_kind=memory.label, peak_reserved_mb=mem["reserved_mb"],
        steps=steps, epochs_done=1.0, device=device, precision=precision, lr=None, seed=config.seed,
        pooling=pooling_of(model), label_names=data.label_names,
        sizes={"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        efficiency=efficiency(test_acc, trainable), versions={"torch": torch.__version__,
                                                              "transformers": transformers.__version__,
                                                              "peft": peft.__version__},
        extra={"probe_weight_decay": wd, "encode_time_s": encode_s, "fit_time_s": fit_s,
               "lbfgs_iterations": iterations},
    )
