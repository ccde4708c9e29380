#!/usr/bin/env bash
# One prepared GPU check: CUDA paths of the engine (bf16 / fp16 autocast, NVML memory in events,
# LoRA vs full memory and throughput on a roberta-base-size random config). Prints a table.
# On a machine without an NVIDIA GPU it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi absent or failing): nothing to check"; exit 0
fi
if ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: a GPU is present but this torch has no CUDA: install a CUDA build of torch"; exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'PY'
import tempfile, threading, time
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification, AutoTokenizer
from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine.events import MemorySampled, fan_out
from peft_tui.engine.models import minilm_path
from peft_tui.engine.store import Store
from peft_tui.engine.trainer import execute

# a roberta-base-size random model saved locally, with MiniLM's tokenizer (no hub here)
folder = tempfile.mkdtemp(prefix="rb-")
tok = AutoTokenizer.from_pretrained(str(minilm_path()))
cfg = RobertaConfig(vocab_size=tok.vocab_size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, pad_token_id=tok.pad_token_id, num_labels=2)
torch.manual_seed(0)
RobertaForSequenceClassification(cfg).save_pretrained(folder, safe_serialization=True)
tok.save_pretrained(folder)

store = Store(tempfile.mkdtemp(prefix="gpu-check-"))
print(f"{'model':8} {'method':8} {'prec':5} {'status':8} {'samples/s':>9} {'peak alloc MB':>13} {'reserved MB':>11} {'NVML MB':>8} {'acc %':>6}")
for model in ("minilm", folder):
    for method in ("full", "lora", "adapters"):
        for prec in ("bf16", "fp16", "fp32"):
            rc = RunConfig(method=method, model=model, data=DataConfig(size=2400), epochs=1, precision=prec,
                           batch_size=32, device="cuda:0")
            nvml = []
            rid = store.create_run(rc)
            sink = fan_out(store, lambda e: nvml.append(e.device_used_mb) if isinstance(e, MemorySampled) else None)
            r = execute(store, rid, rc, sink, threading.Event())
            row = store.get(rid)
            name = "minilm" if model == "minilm" else "rb-base"
            if r is None:
                print(f"{name:8} {method:8} {prec:5} {row['status']:8} {row['error']}")
                continue
            print(f"{name:8} {method:8} {prec:5} {'done':8} {r['samples_per_s']:9.0f} {r['peak_memory_mb']:13.0f} "
                  f"{r['peak_reserved_mb']:11.0f} {max(nvml or [0]):8.0f} {100 * r['accuracy']:6.1f}")
PY
