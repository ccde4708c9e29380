"""The estimate of a run (`estimate`, `suggest`), the plan before queueing (`plan`: will it fit, how long;
`refusal`), and during and after the run (`eta`, `grade`, and `grade_run` for whoever reads a stored run)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from peft_tui.config import ConfigError, RunConfig
from peft_tui.engine.estimate.calibrate import NOMINAL_CPU, Calibration, _bf16_ok, calibration, read_calibration
from peft_tui.engine.estimate.cost import MB, fixed_mb, memory_parts, probe_fit_seconds, step_seconds
from peft_tui.engine.estimate.shape import inputs_for, shape_of

ETA_SWITCH_STEPS = 20  # after this many steps the ETA uses the run's own rate


MEMORY_RANGE = (0.85, 1.15)  # low/high around the peak, from benchmarks/estimate_accuracy.py


TIME_RANGE = (0.7, 1.4)  # slower is likelier than faster: other work on the machine only slows a run


MEASURED_RANGE = (0.9, 1.1)  # ETA range once the run's own rate is known


# ------------------------------------------------------------------------------------------------
# the result
# ------------------------------------------------------------------------------------------------
@dataclass
class Estimate:
    method: str
    device: str  # "cpu" or "cuda:N"
    precision: str  # resolved: fp32 / bf16 / fp16
    batch_size: int
    width: int  # tokens per row in the widest batch (after truncation and padding)
    peak_mb: float
    peak_low_mb: float
    peak_high_mb: float
    parts: dict[str, float]  # MB: weights, grads, optimizer, activations, overhead (they add up to peak_mb)
    step_s: float  # mean seconds per optimizer step
    epoch_s: float
    epoch_low_s: float
    epoch_high_s: float
    total_s: float  # training steps of all epochs and the LP-FT probe fit (evaluation and loading not included)
    total_low_s: float
    total_high_s: float
    steps: int  # optimizer steps of the whole run
    trainable_params: int
    total_params: int
    suggestions: list[str] = field(default_factory=list)  # one-liners, filled when it does not fit
    calibration: str = ""  # the machine calibration it used (`Calibration.key`); "nominal": none measured yet
    probe_s: float = 0.0  # head_init=probe: the forward pass over the training rows (a sample) before step 1
    precision_reason: str = ""  # precision=auto: why `precision` was chosen (precision.pick)

    def fits(self, free_mb: float) -> bool:
        return self.peak_mb <= free_mb

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Eta:
    remaining_s: float
    low_s: float
    high_s: float
    source: str  # "estimate" (before ETA_SWITCH_STEPS) or "measured"


# ------------------------------------------------------------------------------------------------
# the estimate
# ------------------------------------------------------------------------------------------------
def batch_widths(lengths: Sequence[int], batch_size: int, max_length: int, seed: int, cuda: bool) -> list[tuple[int, int]]:
    """(rows, width) of each batch of the first epoch, as the trainer cuts them for this seed."""
    from peft_tui.engine.batching import cuda_width, length_grouped_batches

    cut = [min(n, max_length) for n in lengths]
    longest = max(cut, default=0)
    out = []
    for batch in length_grouped_batches(cut, batch_size, random.Random(seed)):
        w = max(cut[i] for i in batch)
        if cuda:
            w = cuda_width(w, longest)
        out.append((len(batch), w))
    return out


def _percentile(values: list[int], q: float) -> int:
    v = sorted(values)
    return v[max(0, min(len(v) - 1, math.ceil(q / 100 * len(v)) - 1))]


def estimate(config: RunConfig, model_config, lengths: Sequence[int], device: str,
             calibration: Calibration | None = None, free_mb: float | None = None) -> Estimate:
    """Peak memory and time of `config` on `device` ("cpu", "cuda:N"), before it runs.

    `model_config`: the transformers config (see `model_config()`); `lengths`: untruncated token counts
    of the training rows, in order (see `inputs_for()`); `calibration`: this machine's (see
    `calibration()`), None for the nominal figures of a small CPU (NOMINAL_CPU). With `free_mb`,
    `suggestions` is filled when the run would not fit. Times are for a machine as idle as it was when
    calibrated: other work slows a run by what no estimate can know; `eta` corrects after 20 steps."""
    from peft_tui.engine.device import resolve_device, resolve_precision

    if not lengths:
        raise ConfigError("no training rows to estimate from: check the data source")
    cal = calibration or NOMINAL_CPU
    device = resolve_device(device)
    precision = resolve_precision(config.precision, device)
    precision_reason = ""
    if config.precision == "auto":  # the machine's measured choice where calibrated (precision.pick)
        from peft_tui.engine.precision import pick

        choice, precision_reason = pick(cal.precision)
        precision = choice or precision
    s, vocab = shape_of(config, model_config)  # ModelFacts: read from the store's cache when built before
    cuda = device.startswith("cuda")
    batches = batch_widths(lengths, config.batch_size, config.max_length, config.seed, cuda)
    widest = max(w for _, w in batches)
    vocab_cfg = SimpleNamespace(vocab_size=vocab) if vocab is not None else None
    fixed = cal.overhead_mb if cuda else fixed_mb(config, vocab_cfg, lengths, cal)  # data stays in host RAM
    parts = memory_parts(s, config.batch_size, widest, device, precision, fixed)
    peak = sum(parts.values())
    cut = [min(n, config.max_length) for n in lengths]
    p90 = _percentile(cut, 90)
    low_parts = memory_parts(s, config.batch_size, p90, device, precision, fixed)
    epoch = sum(step_seconds(s, b, w, cal, device, precision) for b, w in batches)
    steps = len(batches) * config.epochs
    probe = probe_fit_seconds(config, s, lengths, cal, device, precision)
    total = epoch * config.epochs + probe
    est = Estimate(
        method=config.method, device=device, precision=precision, batch_size=config.batch_size, width=widest,
        peak_mb=peak, peak_low_mb=min(peak, sum(low_parts.values())) * MEMORY_RANGE[0],
        peak_high_mb=peak * MEMORY_RANGE[1], parts=parts,
        step_s=epoch / len(batches), epoch_s=epoch, epoch_low_s=epoch * TIME_RANGE[0],
        epoch_high_s=epoch * TIME_RANGE[1], total_s=total,
        total_low_s=total * TIME_RANGE[0], total_high_s=total * TIME_RANGE[1],
        steps=steps, trainable_params=s.trainable, total_params=s.total, calibration=cal.key, probe_s=probe,
        precision_reason=precision_reason,
    )
    if free_mb is not None and not est.fits(free_mb):
        est.suggestions = suggest(config, model_config, lengths, device, cal, free_mb, est)
    return est


def suggest(config: RunConfig, model_config, lengths: Sequence[int], device: str, cal: Calibration,
            free_mb: float, current: Estimate) -> list[str]:
    """One-liners for what would fit in `free_mb`: a smaller batch, bf16, LoRA, a shorter max_length."""
    import dataclasses

    out = []
    b = config.batch_size // 2
    while b >= 1:
        e = estimate(dataclasses.replace(config, batch_size=b), model_config, lengths, device, cal)
        if e.fits(free_mb):
            out.append(f"batch size {b} would need about {e.peak_mb:,.0f} MB: --batch-size {b}")
            break
        b //= 2
    if current.precision == "fp32" and (device.startswith("cuda") or _bf16_ok()):
        e = estimate(dataclasses.replace(config, precision="bf16"), model_config, lengths, device, cal)
        if e.fits(free_mb):
            out.append(f"bf16 would need about {e.peak_mb:,.0f} MB: --precision bf16")
    if config.method == "full":
        e = estimate(dataclasses.replace(config, method="lora", params={}), model_config, lengths, device, cal)
        # (with ModelFacts, LoRA's shape is read from the cache or built once: the refusal path only)
        if e.fits(free_mb):
            out.append(f"lora would need about {e.peak_mb:,.0f} MB: --method lora")
    n = min(config.max_length, current.width) // 2
    while n >= 8:
        e = estimate(dataclasses.replace(config, max_length=n), model_config, lengths, device, cal)
        if e.fits(free_mb):
            out.append(f"max_length {n} would need about {e.peak_mb:,.0f} MB: --set max_length={n}")
            break
        n //= 2
    if not out:
        out.append(f"nothing tried fits in {free_mb:,.0f} MB: use a smaller model or a machine with more memory")
    return out


# ------------------------------------------------------------------------------------------------
# before queueing: will each run fit (`peft-tui plan`, the fit check of `run`/`compare`/`sweep`, the dashboard)
# ------------------------------------------------------------------------------------------------
def free_memory_mb(device: str) -> float:
    """Memory a run may use now: available RAM on CPU, free memory of the GPU on CUDA."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device).index or 0)
        return free / MB
    import psutil

    return psutil.virtual_memory().available / MB


DEFAULT_MAX_TIME_S = 24 * 3600.0  # a run estimated to take longer is refused unless --max-time raises it (or --force)


def time_limit(config: RunConfig) -> float:
    """The longest a run may be estimated to take before the fit check refuses it: its max_time, else a day."""
    return config.max_time or DEFAULT_MAX_TIME_S


def plan(configs: Sequence[RunConfig], calibration_path: str | Path, calibrate: bool = True,
         data=None, inputs: dict | None = None, cache_dir: Path | None = None) -> list[dict[str, Any] | None]:
    """Per config: {"method", "device", "free_mb", "fits", "fits_memory", "fits_time", "time_limit_s",
    "estimate": Estimate.to_dict()}, or None for a
    baseline (nothing to estimate). Model config and token lengths are read once per model, data and seed.
    `calibrate`: measure the machine (seconds) when `calibration_path` has no calibration for the device
    yet; else use the nominal figures (the estimate's `calibration` then says "nominal"). `data`: the
    DataSplits of `configs[0]`, already loaded. `inputs`: a dict the caller keeps to reuse the model
    configs and token lengths across calls (the dashboard estimates as the form changes). `cache_dir`: the
    store's cache, where token counts and model shapes are kept (`inputs_for`): with it, a command on a
    model, method and data the store has seen imports no torch to estimate."""
    from peft_tui.engine.device import resolve_device
    from peft_tui.engine.methods import get_method

    rows: list[dict[str, Any] | None] = []
    inputs = {} if inputs is None else inputs
    for cfg in configs:
        if get_method(cfg.method).is_baseline:
            rows.append(None)
            continue
        device = resolve_device(cfg.device)
        key = (cfg.model, cfg.data, cfg.data.split_seed_for(cfg.seed), cfg.trust_remote_code)
        if key not in inputs:  # the same model and data for every method and seed: read them once
            first = configs[0]
            same = data is not None and (cfg.data, cfg.data.split_seed_for(cfg.seed)) == (
                first.data, first.data.split_seed_for(first.seed))
            inputs[key] = inputs_for(cfg, data if same else None, cache_dir)
        model_cfg, lengths = inputs[key]
        cal = calibration(calibration_path, device) if calibrate else read_calibration(calibration_path, device)
        available = free_memory_mb(device)
        est = estimate(cfg, model_cfg, lengths, device, cal, free_mb=available)
        memory_ok, time_ok = est.fits(available), est.total_s <= time_limit(cfg)
        rows.append({"method": cfg.method, "device": device, "free_mb": available, "fits": memory_ok and time_ok,
                     "fits_memory": memory_ok, "fits_time": time_ok, "time_limit_s": time_limit(cfg),
                     "estimate": est.to_dict()})
    return rows


def refusal(config: RunConfig, row: dict[str, Any]) -> str:
    """The one line that refuses a run that will not fit (`row`: one of `plan`'s), with the first way
    to make it fit: in memory, or in its time limit (max_time, else DEFAULT_MAX_TIME_S)."""
    e = row["estimate"]
    if row.get("fits_memory", True) and not row.get("fits_time", True):
        limit = row.get("time_limit_s", time_limit(config))
        how = ("a longer --set max_time=DURATION (e.g. 3d)" if config.max_time
               else "--set max_time=DURATION (e.g. 3d) to allow longer")
        return (f"{config.display_name} would take about {duration_text(e['total_s'])}, above its "
                f"{duration_text(limit)} limit: fewer epochs (--epochs), fewer rows (--set data.limit=N), "
                f"or {how} (or --force to run it anyway)")
    tips = e.get("suggestions") or []
    return (f"{config.display_name} will not fit: it needs about {e['peak_mb']:,.0f} MB and {row['device']} has "
            f"{row['free_mb']:,.0f} MB free" + (f"; {tips[0]}" if tips else "") + " (or --force to run it anyway)")


def duration_text(seconds: float) -> str:
    """A duration for a message: 45 s, 12 min, 3.5 h, 67 days, 2.1e+09 s."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    days = seconds / 86400
    return f"{days:,.0f} days" if days < 1e6 else f"{seconds:.2g} s"


# ------------------------------------------------------------------------------------------------
# during and after the run
# ------------------------------------------------------------------------------------------------
def eta(est: Estimate, steps_done: int, elapsed_s: float, total_steps: int) -> Eta:
    """Time left. Before ETA_SWITCH_STEPS steps: the estimate's time per step (and its range), plus the
    LP-FT probe fit while no step is done; from then on: the run's own mean rate so far, with the
    estimated probe fit taken out of `elapsed_s` (it ran once, before step 1: not a step's cost)."""
    left = max(0, total_steps - steps_done)
    if steps_done >= ETA_SWITCH_STEPS and elapsed_s > 0:
        rate = (elapsed_s - min(est.probe_s, 0.5 * elapsed_s)) / steps_done
        return Eta(left * rate, left * rate * MEASURED_RANGE[0], left * rate * MEASURED_RANGE[1], "measured")
    t = left * est.step_s + (est.probe_s if steps_done == 0 else 0.0)
    return Eta(t, t * TIME_RANGE[0], t * TIME_RANGE[1], "estimate")


def grade(est: Estimate, measured: Any) -> dict[str, Any]:
    """The estimate against a finished run (a RunResult or its dict): each figure, the measured one,
    the error in % of the measured one and whether the measurement fell inside the estimated range.
    On CUDA the run measures the allocator's peak, which excludes the context: compared without it."""
    get = measured.get if hasattr(measured, "get") else (lambda k, d=None: getattr(measured, k, d))
    out: dict[str, Any] = {}
    peak = get("peak_memory_mb")
    if peak:
        skip = est.parts["overhead"] if str(get("memory_kind", "")).startswith("CUDA") else 0.0
        e, lo, hi = est.peak_mb - skip, est.peak_low_mb - skip, est.peak_high_mb - skip
        out.update(peak_mb=e, measured_peak_mb=peak, peak_error_pct=100.0 * (e - peak) / peak,
                   peak_in_range=lo <= peak <= hi)
    t = get("train_time_s")
    if t:
        out.update(time_s=est.total_s, measured_time_s=t, time_error_pct=100.0 * (est.total_s - t) / t,
                   time_in_range=est.total_low_s <= t <= est.total_high_s)
    return out


def grade_run(run: dict[str, Any]) -> dict[str, Any] | None:
    """The grade of a stored run (a store row, or its `--json` document): the estimate it was queued with
    against its result, computed where the run is read (the store keeps both, never the grade). None
    until it has both, when neither figure was measured, or when the estimate was written by a version
    this one cannot read."""
    est, result = run.get("estimate"), run.get("result")
    if not est or not result:
        return None
    try:
        return grade(Estimate.from_dict(est), result) or None
    except (ValueError, TypeError, KeyError, AttributeError):  # an estimate or result of another version
        return None
