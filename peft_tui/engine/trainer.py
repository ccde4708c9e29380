"""One training run: config in, events out, a RunResult back.

    execute(store, run_id, config, sink, cancel=None, resume=False, *, cache_dir=None, dist=Dist())
        -> RunResult, or None when the run failed or was cancelled

`train()` is the loop, top to bottom: resolve device and precision, load the data and the model, tokenise
once, fit the classifier as a linear probe first (`head_init=probe`, LP-FT; not when resuming), then AdamW
with linear warmup/decay, gradient clipping, length-grouped batches, evaluation at epoch ends (and every
`eval_every` steps), optional early stopping, a checkpoint at each epoch end and a cancel check every step.
`execute()` runs it, or a method's own `run` hook (a baseline, the head probe), so that any failure is
confined to its run: recorded with a one-line reason, memory released, and the caller (a CLI command or a
worker) goes on.
"""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_tui.config import RunConfig
from peft_tui.engine import probe
from peft_tui.engine.batching import collate, length_grouped_batches, pad_id_of, shard, tokenize_splits
from peft_tui.engine.checkpoint import TrainState
from peft_tui.engine.device import autocast_for, resolve_device, resolve_precision
from peft_tui.engine.dist import Dist
from peft_tui.engine.evaluation import EvalResult, evaluate
from peft_tui.engine.events import (
    LOG_INTERVAL_S,
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
from peft_tui.engine.models import build_model, library_versions, seed_everything  # noqa: F401 - re-exported
from peft_tui.engine.result import Cancelled, Diverged, RunResult, efficiency
from peft_tui.errors import ConfigError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.engine.data import DataSplits
    from peft_tui.engine.memory import MemoryMonitor



# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
def train(config: RunConfig, run_id: int, sink: Sink, cancel: threading.Event, out_dir: Path, *,
          resume_from: Path | None = None, cache_dir: Path | None = None,
          data: DataSplits | None = None, dist: Dist = Dist()) -> RunResult:
    """Train one run of a validated config and save what it trained in `out_dir`. With `resume_from` (a
    checkpoint folder), continue from that epoch end: same weights, optimizer, scheduler and RNG states,
    and steps keep counting. `cache_dir`: the tokenisation cache (None: none). `data`: splits already
    loaded by the caller (else loaded from `config.data`). `dist`: this process's rank in a data-parallel
    run (default: the only process)."""
    import torch
    import torch.nn.functional as F

    from peft_tui.engine import checkpoint, models
    from peft_tui.engine.data import load_splits
    from peft_tui.engine.dropout import use_fast_dropout
    from peft_tui.engine.memory import MemoryMonitor, process_peak_mb
    from peft_tui.engine.methods import get_method, learning_rate
    from peft_tui.engine.pooling import pooling_of
    from peft_tui.engine.weights import count_parameters, removed_on_failure

    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    autocast = autocast_for(precision, device)
    method = get_method(config.method)
    params = method.resolve(config.params)
    memory = MemoryMonitor(device)

    # data and model (each part timed: the run's log says what its start-up cost)
    ready = [time.perf_counter()]
    if data is None:
        data = load_splits(config.data, config.seed)
    for note in data.notes:
        sink(LogMessage(run_id, "info", note))
    ready.append(time.perf_counter())
    tokenizer = models.load_tokenizer(config.model, config.trust_remote_code)
    ready.append(time.perf_counter())
    head_init = probe.resolve_head_init(config.head_init, math.ceil(len(data.train) / config.batch_size) * config.epochs)
    if config.head_init == "auto" and head_init == "random" and resume_from is None:
        sink(LogMessage(run_id, "info", f"head_init=auto: a seeded head, no probe fit (a run of more than "
                                        f"{probe.AUTO_PROBE_MAX_STEPS} steps trains its head on its own)"))
    fit_probe = head_init == "probe" and resume_from is None  # a resumed run's checkpoint holds the fitted head
    shared = fit_probe and config.method in probe.SHARES_BASE_FEATURES  # the probe's features can come from the cache
    model = build_model(config, method, params, data.num_labels, device, fingerprint=shared)
    use_fast_dropout(model, device)  # CPU: the same dropout, its masks drawn at a fraction of the cost
    trainable, total = count_parameters(model)
    pad_id = pad_id_of(tokenizer)
    ready.append(time.perf_counter())
    train_ids, val_ids, test_ids = tokenize_splits(tokenizer, data, config.max_length, cache_dir)
    lengths = [len(s) for s in train_ids]
    ready.append(time.perf_counter())

    # optimisation
    steps_per_epoch = math.ceil(len(train_ids) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer, scheduler = build_optimizer(model, config, total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    rng = random.Random(config.seed)
    state = TrainState(steps_per_epoch)

    sink(RunStarted(run_id, config.display_name, config.method, total_steps, config.epochs, trainable, total,
                    device, precision, len(train_ids), data.num_labels))
    sink(LogMessage(run_id, "info", "ready in {:.2f}s: data {:.2f}s, tokenizer {:.2f}s, model {:.2f}s, token ids "
                                    "{:.2f}s".format(ready[-1] - ready[0], *(b - a for a, b in zip(ready, ready[1:])))))
    if resume_from is not None:
        state = checkpoint.load(resume_from, model, optimizer, scheduler, scaler, rng)
        if state.steps_per_epoch != steps_per_epoch:
            raise ConfigError("the data changed since the checkpoint (different number of batches): retry the run")
        sink(LogMessage(run_id, "info", f"resumed from the checkpoint at step {state.step} (epoch {state.epoch})"))

    eval_bs = max(64, config.batch_size * 2)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if fit_probe:
        extra = init_head(model, run_id, sink, cancel, train_ids, data, pad_id, device, precision, cache_dir, shared)
    last_val: dict[int, EvalResult] = {}  # the latest validation result, keyed by its step

    def evaluate_shared(ids: list[list[int]], labels: list[int]) -> EvalResult:
        """Rank 0 evaluates (the unwrapped model: no collective inside); every rank gets the figures."""
        r = evaluate(model, ids, labels, data.num_labels, eval_bs, pad_id, device, autocast) if dist.is_main \
            else EvalResult(0.0, 0.0, 0.0)
        return r if dist.world_size == 1 else EvalResult(*dist.all_reduce([r.loss, r.accuracy, r.f1]))

    def run_eval(split: str, ids: list[list[int]], labels: list[int]) -> EvalResult:
        r = evaluate_shared(ids, labels)
        sink(EvalLogged(run_id, state.step, state.step / steps_per_epoch, split, r.loss, r.accuracy, r.f1))
        return r

    def validate_and_stop() -> bool:
        """Evaluate on the val split; True when early stopping says stop."""
        r = run_eval("val", val_ids, data.val.labels)
        last_val.clear()
        last_val[state.step] = r
        return record_eval(state, r.accuracy, model, config.patience)

    log = StepLog(run_id, sink, memory, total_steps)
    clock = Stopwatch(state.train_time + extra.get("head_init_s", 0.0))  # training time, evaluation excluded
    stopped_early = out_of_time = False  # out_of_time: config.max_time of wall time has passed
    net = dist.wrap(model, device)  # several processes: DDP starts every rank from rank 0's weights
    model.train()
    for epoch in range(state.epoch, config.epochs):
        clock.start()
        for batch in length_grouped_batches(lengths, config.batch_size, rng):
            if dist.any(cancel.is_set()):
                raise Cancelled(state.step)
            mine, weight = shard(batch, dist.rank, dist.world_size)
            x, m, y = collate(train_ids, data.train.labels, mine, pad_id, device)
            with autocast():
                logits = net(input_ids=x, attention_mask=m).logits
            loss = F.cross_entropy(logits.float(), y)
            if weight != 1.0:
                loss = loss * weight
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable_params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.step += 1
            state.samples += len(batch)
            state.tokens += sum(lengths[i] for i in batch)
            log.add(dist.mean_loss(loss), state, scheduler.get_last_lr()[0], clock.elapsed())
            if config.max_time and dist.any(time.perf_counter() - t0 >= config.max_time):
                out_of_time = True
                break
            if config.eval_every and state.step % config.eval_every == 0 and state.step % steps_per_epoch:
                clock.stop()
                stopped_early = validate_and_stop()
                if stopped_early:
                    break
                clock.start()
        clock.stop()
        if out_of_time:  # evaluated and saved as it is, like a run that ended: its figures say where it stopped
            extra["stopped"] = f"max_time ({config.max_time:g} s) reached at step {state.step} of {total_steps}"
            sink(LogMessage(run_id, "warning", f"stopped: {extra['stopped']}; evaluating the model as it is"))
            validate_and_stop()
            break
        if stopped_early or validate_and_stop():
            stopped_early = True
            break
        state.epoch, state.train_time = epoch + 1, clock.total
        if dist.is_main:
            checkpoint.save(out_dir, model, optimizer, scheduler, scaler, rng, state)

    if state.best_state is not None:  # early stopping on: keep the best evaluation's weights
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state.best_state:
                    p.copy_(state.best_state[n])
    # the final weights were evaluated at the last epoch end unless early stopping restored older ones
    val = last_val.get(state.step) if state.best_state is None else None
    if val is None:
        val = evaluate_shared(val_ids, data.val.labels)
    test = run_eval("test", test_ids, data.test.labels)
    mem = memory.sample()
    peak_mb, memory_kind = mem["peak_mb"], memory.label
    if dist.world_size > 1:  # each rank's own peak (CPU: its process's exact RSS); the run reports the largest
        ranks = dist.gather(mem["peak_mb"] if memory.is_cuda else process_peak_mb())
        peak_mb = max(ranks)
        memory_kind = f"{memory.label if memory.is_cuda else 'peak RSS'}, the largest of {len(ranks)} ranks"
        extra["rank_peak_mb"] = [round(x, 1) for x in ranks]
    if dist.is_main:
        with removed_on_failure(out_dir):  # a full disk leaves no half-saved weights (the checkpoint stays)
            method.save(model, out_dir, params)
        checkpoint.discard(out_dir)

    train_time = max(clock.total, 1e-9)
    return RunResult(
        run_id=run_id, name=config.display_name, method=config.method, model=config.model, data=data.source,
        params=params,
        accuracy=test.accuracy, f1=test.f1, test_loss=test.loss,
        val_accuracy=val.accuracy, val_f1=val.f1, best_val_accuracy=max(state.best_acc, val.accuracy),
        trainable_params=trainable, total_params=total, trainable_pct=100.0 * trainable / total,
        train_time_s=clock.total, wall_time_s=time.perf_counter() - t0,
        samples_per_s=state.samples / train_time, tokens_per_s=state.tokens / train_time,
        peak_memory_mb=peak_mb, memory_kind=memory_kind, peak_reserved_mb=mem["reserved_mb"],
        steps=state.step, epochs_done=state.step / steps_per_epoch, stopped_early=stopped_early,
        device=device, precision=precision, lr=learning_rate(config), seed=config.seed, pooling=pooling_of(model),
        label_names=data.label_names,
        sizes={"train": len(train_ids), "val": len(val_ids), "test": len(test_ids)},
        efficiency=efficiency(test.accuracy, trainable),
        versions=library_versions(), extra=extra,
    )


# ------------------------------------------------------------------------------------------------
# the loop's parts
# ------------------------------------------------------------------------------------------------
def init_head(model, run_id: int, sink: Sink, cancel: threading.Event, train_ids: list[list[int]],
              data: DataSplits, pad_id: int, device: str, precision: str, cache_dir: Path | None = None,
              shared: bool = False) -> dict[str, Any]:
    """`head_init=probe` (LP-FT): fit the model's final classifier layer as a linear probe on the features
    the wrapped model gives (a sample of) the training texts before any step, its weight decay chosen by
    cross-validation on them (probe.fit_head: no validation text is encoded; with `shared`, the features come
    from / go to the cache in `cache_dir`), and say so. Returns the figures for the result's `extra`."""
    t = time.perf_counter()
    fit, iterations, stats = probe.fit_head(model, train_ids, data.train.labels, data.num_labels, pad_id, device,
                                            precision, cancel, cache_dir, shared)
    seconds = time.perf_counter() - t
    fitted_on = len(probe.probe_rows(data.train.labels))
    of = "" if fitted_on == len(train_ids) else f"{fitted_on} of "
    chosen = (f"chosen by {min(probe.PROBE_FOLDS, fitted_on)}-fold cross-validation on them, where it scores "
              f"{fit.val_accuracy:.1%}" if fitted_on > 1 else "the default: a single training text")
    sink(LogMessage(run_id, "info", f"head_init=probe: classifier fitted as a linear probe on {of}the {len(train_ids)} "
                                    f"training texts' features before the first step in {seconds:.1f}s (weight "
                                    f"decay {fit.weight_decay:g}, {chosen}; {iterations} L-BFGS iterations; "
                                    f"{stats.describe()})"))
    return {"head_init_s": seconds, "head_init_weight_decay": fit.weight_decay,
            "head_init_cv_accuracy": fit.val_accuracy, "head_init_texts_encoded": stats.encoded,
            "head_init_texts_cached": stats.cached}


def build_optimizer(model, config: RunConfig, total_steps: int):
    """AdamW (no weight decay on biases and norms) and its schedule: linear warmup, then linear decay to 0."""
    import torch

    from peft_tui.engine.methods import learning_rate

    warmup = int(total_steps * config.warmup_ratio)
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in n or "layernorm" in n else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate(config),
        # fused AdamW (one kernel over all parameters; runs are on cpu or cuda): on this 2-core CPU a MiniLM
        # full fine-tune's optimizer step took 18 ms fused against 87 ms foreach (benchmarks, README Performance)
        fused=True,
    )

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def record_eval(state: TrainState, accuracy: float, model, patience: int) -> bool:
    """Track the best validation accuracy (with early stopping on, and its weights); True when it is time
    to stop: `patience` evaluations in a row without improvement."""
    if accuracy > state.best_acc:
        state.best_acc, state.bad_evals = accuracy, 0
        if patience:
            state.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return False
    state.bad_evals += 1
    return bool(patience) and state.bad_evals >= patience


class StepLog:
    """StepLogged (the loss averaged over the steps since the last one) and MemorySampled, at most every
    LOG_INTERVAL_S and at the last step. On CUDA the loss sum stays on the device until then (no sync per
    step); on CPU the process RSS is sampled every step so that the peak is not missed."""

    def __init__(self, run_id: int, sink: Sink, memory: MemoryMonitor, total_steps: int):
        self.run_id, self.sink, self.memory, self.total_steps = run_id, sink, memory, total_steps
        self.loss_sum: Any = 0.0
        self.n = 0
        self.last = 0.0

    def add(self, loss, state: TrainState, lr: float, elapsed: float) -> None:
        """`loss`: the step's loss tensor, or a float (the mean over the ranks of a data-parallel run),
        checked at once so that every rank stops at the same step."""
        if isinstance(loss, float) and not math.isfinite(loss):
            raise Diverged(state.step, loss)
        self.loss_sum = self.loss_sum + (loss if isinstance(loss, float) else
                                         loss.detach() if self.memory.is_cuda else loss.item())
        self.n += 1
        if not self.memory.is_cuda:
            self.memory.sample()
        now = time.perf_counter()
        if now - self.last < LOG_INTERVAL_S and state.step != self.total_steps:
            return
        mean = float(self.loss_sum) / self.n
        if not math.isfinite(mean):
            raise Diverged(state.step, mean)
        epoch = state.step / state.steps_per_epoch
        self.sink(StepLogged(self.run_id, state.step, epoch, mean, lr, state.samples / max(elapsed, 1e-9), elapsed))
        mem = self.memory.sample()
        self.sink(MemorySampled(self.run_id, state.step, elapsed, self.memory.device, mem["used_mb"], mem["peak_mb"],
                                mem["reserved_mb"], mem["device_used_mb"]))
        self.loss_sum, self.n, self.last = 0.0, 0, now


class Stopwatch:
    """Accumulated time between start() and stop() calls, starting from `total` seconds."""

    def __init__(self, total: float = 0.0):
        self.total = total
        self._since: float | None = None

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self.total += time.perf_counter() - self._since
            self._since = None

    def elapsed(self) -> float:
        return self.total + (time.perf_counter() - self._since if self._since is not None else 0.0)


# ------------------------------------------------------------------------------------------------
# before and around a run
# ------------------------------------------------------------------------------------------------
def preflight(config: RunConfig, load_data: bool = True) -> DataSplits | None:
    """Check a validated config before it is queued (engine/submit.py): device, precision, data and
    model location. Raises ConfigError (one line). Returns the loaded DataSplits (for the summary and the
    estimate), None without `load_data`."""
    from peft_tui.engine import models
    from peft_tui.engine.data import load_splits
    from peft_tui.engine.methods import get_method

    method = get_method(config.method)
    if not method.is_baseline:  # a baseline uses neither the base model nor the device
        device = resolve_device(config.device)
        resolve_precision(config.precision, device)
        models.check_model_name(config.model)
        params = method.resolve(config.params)
        models.check_model_files(config.model, config.max_length, config.trust_remote_code,
                                 check=lambda skeleton: method.check_model(skeleton, params),
                                 virtual=method.positions_taken(params))
    return load_splits(config.data, config.seed) if load_data else None


def execute(store, run_id: int, config: RunConfig, sink: Sink, cancel: threading.Event | None = None,
            resume: bool = False, *, cache_dir: Path | None = None, dist: Dist = Dist()) -> RunResult | None:
    """Run one stored run to its end. Returns the result, or None when it failed or was cancelled.
    Never raises for a problem inside the run: it becomes a RunFailed / RunCancelled event.
    With `resume`, continue from the run's checkpoint (see `checkpoint.prepare_resume`). `cache_dir`: the
    tokenisation cache (default: the store's). `dist`: this
    process's rank in a data-parallel run (a method with its own procedure runs on rank 0 alone)."""
    from peft_tui.engine import checkpoint
    from peft_tui.engine.memory import release_memory
    from peft_tui.engine.methods import get_method, validate
    from peft_tui.engine.weights import disk_full_at

    cancel = cancel or threading.Event()
    result = None
    try:
        validate(config)
        out_dir = store.run_dir(run_id)
        method = get_method(config.method)
        if not method.is_baseline and getattr(store, "root", None) is not None:
            from peft_tui.engine.estimate import measure_precision_once, resolved_auto

            calibration = store.root / "calibration.json"
            if config.precision == "auto":  # on a CPU not measured yet: bf16 against fp32, once per machine
                from peft_tui.engine.device import resolve_device

                note = measure_precision_once(calibration, resolve_device(config.device))
                if note:
                    sink(LogMessage(run_id, "info", note))
            config = resolved_auto(config, calibration)  # auto: the machine's measured pick
        if method.run is not None:  # the method's own procedure: a baseline, the head probe
            if resume:
                raise ConfigError(f"run {run_id} ({config.method}) keeps no checkpoint to resume from: retry it")
            if not dist.is_main:
                return None
            result = method.run(config, run_id, sink, cancel, out_dir, None,
                                store.cache_dir if cache_dir is None else cache_dir)
        else:
            resume_from = checkpoint.find(out_dir) if resume else None
            if resume and resume_from is None:
                raise ConfigError(f"run {run_id} has no checkpoint to resume from: start it again instead")
            result = train(config, run_id, sink, cancel, out_dir, resume_from=resume_from,
                           cache_dir=store.cache_dir if cache_dir is None else cache_dir, dist=dist)
        sink(RunFinished(run_id, result))
    except Cancelled as e:
        result = None
        sink(RunCancelled(run_id, int(e.args[0]) if e.args else 0))
    except Diverged as e:
        result = None
        sink(RunFailed(run_id, str(e), status="diverged"))
    except Exception as e:  # noqa: BLE001 - confine any failure to its run
        result = None
        msg = first_line(e)
        if disk_full_at(e) is not None:
            msg = f"disk full at {disk_full_at(e) or store.root}: free some space, then resume or retry the run"
        elif not isinstance(e, ConfigError) and "out of memory" in msg.lower():
            msg = f"out of memory: {msg[:120]}; try a smaller batch_size, --precision bf16, or lora"
        sink(RunFailed(run_id, msg))
    finally:
        release_memory()
    return result
