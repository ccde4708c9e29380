"""CPU dropout (engine/dropout.py): a training step of MiniLM with torch's dropout, with `use_fast_dropout`
and with no dropout at all (the floor), interleaved step by step so that the machine's load falls on all
three alike. Full fine-tuning and LoRA, batch 32 x 52 tokens (AG News' typical width), fused AdamW.

Prints the median and the fastest step of each and the ratios to torch's dropout. Target: fast dropout
saves most of what dropout costs (the gap to the floor), with the same drop rate.

Usage: python benchmarks/dropout.py [--steps 14] [--methods full,lora]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from peft_tui.config import RunConfig
from peft_tui.engine import dropout, models
from peft_tui.engine.methods import get_method


def build(method: str, kind: str):
    cfg = RunConfig(method=method, model="minilm")
    m = get_method(method)
    model = models.build_model(cfg, m, m.resolve(cfg.params), 4, "cpu")
    if kind == "fast":
        dropout.use_fast_dropout(model, "cpu")
    elif kind == "none":
        for mod in model.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    return model, opt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--methods", default="full,lora")
    a = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randint(1000, 20000, (32, 52))
    mask = torch.ones_like(x)
    mask[:8, 40:] = 0  # some padding, as a length-grouped batch has
    y = torch.randint(0, 4, (32,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MiniLM, batch 32 x 52, median of "
          f"{a.steps - 2} interleaved steps (2 warm-up)")
    for method in a.methods.split(","):
        runs = {kind: build(method, kind) for kind in ("torch", "fast", "none")}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for step in range(a.steps):
            for kind, (model, opt) in runs.items():
                t = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(input_ids=x, attention_mask=mask).logits, y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step >= 2:
                    times[kind].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        for kind in runs:
            print(f"{method:5} {kind:6} dropout: median {med[kind] * 1e3:6.0f} ms, fastest {min(times[kind]) * 1e3:6.0f} ms, "
                  f"{med[kind] / med['torch']:.2f}x torch's step")
        saved = (med["torch"] - med["fast"]) / max(1e-9, med["torch"] - med["none"])
        print(f"{method:5} fast dropout saves {1 - med['fast'] / med['torch']:.1%} of a step: {saved:.0%} of what "
              f"dropout costs")


if __name__ == "__main__":
    main()
