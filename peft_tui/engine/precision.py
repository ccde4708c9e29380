"""`--precision auto` chosen by measurement: the machine calibration (estimate.measure) also times a short
training step of a small BERT in bf16 autocast and in fp32, and runs a few steps of each from the same
weights on the same batch. `auto` then takes bf16 where it is at least MIN_SPEEDUP faster and its losses
stay within LOSS_TOLERANCE of fp32's; fp32 otherwise (bf16 slower, no faster, or off in its losses).

    figures = measure(device)                 # {"fp32_s", "bf16_s", "loss_gap"} or {} (bf16 unusable)
    choice, reason = pick(figures)            # ("bf16" | "fp32", one line) or (None, why not measured)
    estimate.resolved_auto(config, calibration_path)   # the config with `auto` made concrete where measured

Why: a CPU flag (AMX) decided before, and it was wrong both ways: on an AVX512-BF16 CPU without AMX,
torch 2.13 trains MiniLM 1.79x faster in bf16 (issue 19), where older builds were slower. A measured
step says what this machine, this torch and this device do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    pass

MIN_SPEEDUP = 1.1  # bf16 must be this much faster than fp32 to be chosen: a tie keeps fp32's exactness
LOSS_TOLERANCE = 0.05  # largest |bf16 loss - fp32 loss| over the guard's steps, as a share of fp32's first loss
GUARD_STEPS = 4  # steps from the same weights on the same batch in each precision, losses compared
TIMED_STEPS = 2  # then the fastest of this many steps is each precision's time
SLOWER_STOP = 2.0  # a bf16 step this many times fp32's ends bf16's measurement early
# the timed model: MiniLM's layer shape (hidden 384, 12 heads, feed-forward 1536), 2 layers, a batch of
# 16 rows x 64 tokens: big enough that the matrix products dominate as in a real run, small enough to
# time in a few seconds (about 0.1-0.5 s a step on a quiet 2-core CPU)
SHAPE: dict[str, Any] = dict(vocab_size=1000, hidden_size=384, num_hidden_layers=2, num_attention_heads=12,
                             intermediate_size=1536, max_position_embeddings=128, num_labels=2)
BATCH = (16, 64)


def _step_fn(device: str, precision: str, seed: int = 0) -> Callable[[], float]:
    """One training step (forward, backward, clip, fused AdamW) of the SHAPE BERT in `precision`, on a
    fixed batch; returns the step's loss. The same seed gives the same weights and batch."""
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForSequenceClassification

    from peft_tui.engine.device import autocast_for

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**SHAPE)).to(device)  # type: ignore[call-arg, arg-type]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    rows, width = BATCH
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, SHAPE["vocab_size"], (rows, width), generator=g).to(device)
    mask = torch.ones_like(x)
    y = torch.randint(0, 2, (rows,), generator=g).to(device)
    autocast = autocast_for(precision, device)

    def step() -> float:
        with autocast():
            logits = model(input_ids=x, attention_mask=mask).logits
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def bf16_usable(device: str) -> bool:
    import torch

    return not device.startswith("cuda") or torch.cuda.is_bf16_supported()


def _step_seconds(step: Callable[[], float], sync: Callable[[], None], clock=time.perf_counter,
                  repeats: int = TIMED_STEPS) -> float:
    """The fastest of `repeats` calls of an already warm `step` (the least disturbed by other work)."""
    best = math.inf
    for _ in range(repeats):
        t0 = clock()
        step()
        sync()
        best = min(best, clock() - t0)
    return best


def measure(device: str, timed: Callable | None = None, clock=time.perf_counter) -> dict[str, float]:
    """{"fp32_s", "bf16_s": seconds per step (`timed(step, sync, clock)`: the fastest of TIMED_STEPS by
    default), "loss_gap": the guard's largest loss difference over fp32's first loss}; {} where bf16
    cannot run on `device`. fp32 first; bf16 stops early once a step of it is SLOWER_STOP times fp32's
    (it will not be chosen; no need to spend more on it), with "loss_gap" then from the steps it made."""
    import torch

    if not bf16_usable(device):
        return {}
    timed = timed or _step_seconds
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    step = _step_fn(device, "fp32")
    fp32_losses = [step() for _ in range(GUARD_STEPS)]  # the guard's steps, also the warm-up
    out = {"fp32_s": timed(step, sync, clock)}
    step = _step_fn(device, "bf16")
    bf16_losses: list[float] = []
    for _ in range(GUARD_STEPS):
        t0 = clock()
        bf16_losses.append(step())
        sync()
        took = clock() - t0
        if len(bf16_losses) > 1 and took > SLOWER_STOP * out["fp32_s"]:
            out["bf16_s"] = took
            break
    else:
        out["bf16_s"] = timed(step, sync, clock)
    out["loss_gap"] = loss_gap(fp32_losses, bf16_losses)
    return out


def loss_gap(fp32: list[float], bf16: list[float]) -> float:
    """The largest |bf16 - fp32| loss over the steps both made, as a share of fp32's first loss (inf when
    not finite)."""
    gap = max(abs(a - b) for a, b in zip(fp32, bf16)) / max(abs(fp32[0]), 1e-6)
    return gap if math.isfinite(gap) else math.inf


def pick(figures: dict[str, float] | None) -> tuple[str | None, str]:
    """(the precision `auto` takes, why) from `measure`'s figures; (None, why) when there are none."""
    if not figures or "fp32_s" not in figures or "bf16_s" not in figures:
        return None, "not measured on this machine yet (the first CPU run with precision auto measures it, or peft-tui plan)"
    fp32, bf16, gap = figures["fp32_s"], figures["bf16_s"], figures.get("loss_gap", math.inf)
    speedup = fp32 / bf16 if bf16 > 0 else 0.0
    timing = f"a training step took {1000 * bf16:.0f} ms in bf16 and {1000 * fp32:.0f} ms in fp32"
    if gap > LOSS_TOLERANCE:
        return "fp32", (f"bf16's losses strayed {gap:.1%} from fp32's (tolerance {LOSS_TOLERANCE:.0%}); "
                        f"{timing}")
    if speedup < MIN_SPEEDUP:
        return "fp32", f"bf16 is not faster here ({speedup:.2f}x, needs {MIN_SPEEDUP:g}x): {timing}"
    return "bf16", f"bf16 is {speedup:.2f}x faster here with losses within {gap:.1%} of fp32's: {timing}"
