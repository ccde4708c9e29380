"""Peak memory of one training step on a CPU, against the estimate's terms (issue 19: the peak-memory model).

For each (method, precision, width): a fresh process builds MiniLM with the method, as a run does (the CPU
dropout of engine/dropout.py in place), takes two warm-up steps at 16 tokens, then one step of 32 rows at the
width; printed: how far the process's peak RSS rose in that step (MB), and `activation_bytes`' terms for it
without the allocator's retention ("formula_raw_mb": kept activations + the backward temporary + gradients).
Run on 2026-12-03 (AMX Xeon): at 512 tokens the raw terms were 10.4 GB where a step rose 8.8 GB (fp32) and
6.5 GB (bf16), while the runs' estimates scaled them by the retention again; see cost.mapped_bytes.

Usage: python benchmarks/step_memory.py [--widths 128,256,512] [--methods full,lora] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

STEP = r"""
import json, resource, sys
import torch
from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine import estimate as E
from peft_tui.engine.device import autocast_for
from peft_tui.engine.dropout import use_fast_dropout
from peft_tui.engine.methods import get_method
from peft_tui.engine.models import build_model

method, precision, width = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = RunConfig(method=method, model="minilm", data=DataConfig(size=200), precision=precision, max_length=512)
m = get_method(method)
model = build_model(cfg, m, m.resolve(cfg.params), 2, "cpu")
use_fast_dropout(model, "cpu")
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
autocast = autocast_for(precision, "cpu")

def step(rows, w):
    x = torch.randint(1000, 20000, (rows, w))
    with autocast():
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
    torch.nn.functional.cross_entropy(logits.float(), torch.randint(0, 2, (rows,))).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

step(32, 16); step(32, 16)
before = peak_mb()
step(32, width)
rose = peak_mb() - before
shape = E.model_shape(cfg, E.inputs_for(cfg)[0])
act, temp = E.activation_bytes(shape, 32, width, "cpu", precision)
heap, live = E.mapped_bytes(shape, 32, width, "cpu", precision)
print(json.dumps({"method": method, "precision": precision, "width": width, "step_peak_mb": round(rose),
                  "formula_raw_mb": round((act + temp + shape.trainable * 4) / 2**20),
                  "mapped_live_mb": round(live / 2**20)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="128,256,512")
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--precisions", default="fp32,bf16")
    a = ap.parse_args()
    for width in a.widths.split(","):
        for method in a.methods.split(","):
            for precision in a.precisions.split(","):
                out = subprocess.run([sys.executable, "-c", STEP, method, precision, width], capture_output=True,
                                     text=True)
                line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else json.dumps(
                    {"method": method, "precision": precision, "width": width, "error": out.stderr[-300:]})
                print(line, flush=True)


if __name__ == "__main__":
    main()
