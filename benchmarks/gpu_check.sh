#!/usr/bin/env bash
# One prepared GPU check: CUDA paths of the engine (bf16 / fp16 autocast, NVML memory in events,
# LoRA vs full memory and throughput on a roberta-base-size random config), then runs as processes:
# two runs queued on one GPU (each its own process and peak memory), a torchrun (NCCL) run with
# --gpus 1 (and 2 where there are two GPUs), and a run through a local Ray instance using the GPU;
# then many small runs on one GPU: runs per hour of GPU_CHECK_PACK_RUNS (default 8) LoRA runs at
# --runs-per-gpu 1, 2, 4, 8 and auto, and of a seven-method compare at 1 and auto; and bf16 against fp32
# with the CUDA width buckets on and off (PEFT_TUI_CUDA_BUCKETS=0: multiples of 8, as before), each run
# in a fresh process (a process keeps the plans of the shapes it met). Prints tables. On a machine without an NVIDIA GPU it says so and exits 0; without Ray, the Ray
# part says so and is skipped.
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
            print(f"{name:8} {method:8} {prec:5} {'done':8} {r.samples_per_s:9.0f} {r.peak_memory_mb:13.0f} "
                  f"{r.peak_reserved_mb:11.0f} {max(nvml or [0]):8.0f} {100 * r.accuracy:6.1f}")
PY
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'PY'
import importlib.util, os, socket, tempfile, time
import torch
from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine.launch import ddp
from peft_tui.engine.launch.client import watch
from peft_tui.engine.launch.local import LocalPool
from peft_tui.engine.store import Store

def config(method, **kw):
    return RunConfig(method=method, model="minilm", data=DataConfig(size=2400), epochs=1, batch_size=32,
                     precision="bf16", **kw)

def row_line(label, row):
    r = row["result"] or {}
    nvml = max((v for _, v in STORE.series(row["id"], "gpu_device_used_mb")), default=0)
    print(f"{label:22} {row['status']:9} {r.get('steps', 0):5} {r.get('train_time_s', 0):7.1f} "
          f"{r.get('peak_memory_mb') or 0:13.0f} {r.get('peak_reserved_mb') or 0:11.0f} {nvml:8.0f} "
          f"{row['startup_s'] or 0:9.2f}  {row['error'] or r.get('memory_kind', '')}")

STORE = Store(tempfile.mkdtemp(prefix="gpu-check-procs-"))
print(f"\n{'run':22} {'status':9} {'steps':>5} {'train s':>7} {'peak alloc MB':>13} {'reserved MB':>11} "
      f"{'NVML MB':>8} {'startup s':>9}")

# (a) two runs queued on one GPU: one worker for cuda:0 trains them one after the other, each in a
# process of its own, so each peak is its own (full's must be the larger)
ids = [STORE.create_run(config(m, name=f"queued-{m}", device="cuda")) for m in ("full", "lora")]
with LocalPool(STORE.root, devices=["cuda:0"]) as pool:
    pool.wake()
    watch(STORE, ids, None)
rows = [STORE.get(i) for i in ids]
for row in rows:
    row_line(row["name"], row)
peaks = [(r["result"] or {}).get("peak_memory_mb") or 0 for r in rows]
print(f"  per-run peaks: full {peaks[0]:.0f} MB > lora {peaks[1]:.0f} MB: {'PASS' if peaks[0] > peaks[1] > 0 else 'FAIL'}")

# (b) torchrun + NCCL: --gpus 1, and --gpus 2 where the machine has two GPUs
for n in sorted({1, min(2, torch.cuda.device_count())}):
    run_id = STORE.create_run(config("lora", name=f"torchrun-gpus{n}", device="cuda", nproc=n))
    STORE.claim(f"{socket.gethostname()}:{os.getpid()}:cuda", os.getpid(), socket.gethostname(), ["cuda:0"])
    t0 = time.perf_counter()
    rc = ddp.launch(STORE.root, run_id, n, "cuda")
    row_line(f"torchrun --gpus {n}", STORE.get(run_id))
    print(f"  torchrun exit code {rc}, {time.perf_counter() - t0:.1f} s in all")

# (c) a local Ray instance with this machine's GPUs: the run's task asks for one GPU
if importlib.util.find_spec("ray") is None:
    print("ray: not installed (pip install 'peft-tui[ray]'): Ray check skipped")
else:
    import ray
    from peft_tui.engine.launch import ray as on_ray

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    started = time.perf_counter() - t0
    run_id = STORE.create_run(config("lora", name="ray-gpu", device="auto"))
    on_ray.submit(STORE, [run_id], None)
    row = STORE.get(run_id)
    row_line("ray task (1 GPU)", row)
    device = (row["result"] or {}).get("device")
    print(f"  ray.init {started:.1f} s; trained on {device}: {'PASS' if str(device).startswith('cuda') else 'FAIL'}")
    ray.shutdown()
PY
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'PY'
import os, subprocess, sys, tempfile, time
from peft_tui.engine.store import Store

RUNS = int(os.environ.get("GPU_CHECK_PACK_RUNS", "8"))
SMALL = ["--model", "minilm", "--epochs", "1", "--set", "data.size=2400", "--device", "cuda", "--json"]

def cli(*args, env=None):
    """One peft-tui command in a process of its own (its own pool of workers): (store rows, wall s, error)."""
    root = tempfile.mkdtemp(prefix="gpu-check-pack-")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "peft_tui.cli", *args, "--store", root], capture_output=True,
                       text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    rows = Store(root).list()
    err = "" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
    return rows, wall, err

def at_once(rows):
    """The most runs that trained at the same moment (from their claim and finish times)."""
    marks = sorted([(r["claimed_at"], 1) for r in rows if r["claimed_at"] and r["finished_at"]]
                   + [(r["finished_at"], -1) for r in rows if r["claimed_at"] and r["finished_at"]])
    best = now = 0
    for _, step in marks:
        now += step
        best = max(best, now)
    return best

# (d) many small runs on one GPU: the same queue at --runs-per-gpu 1, 2, 4, 8 and auto
print(f"\n{'queue':30} {'per GPU':>7} {'done':>5} {'at once':>7} {'wall s':>7} {'runs/h':>7} {'vs 1':>5} "
      f"{'est. peak MB':>12}  errors")
for label, methods, seeds, settings in (
        (f"{RUNS} x lora (seeds)", "lora", RUNS, ("1", "2", "4", "8", "auto")),
        ("compare, 7 methods", "full,lora,adapters,dora,ia3,bitfit,prefix", 1, ("1", "auto"))):
    base = None
    for per_gpu in settings:
        rows, wall, err = cli("compare", "--methods", methods, "--seeds", str(seeds), "--no-baseline",
                              "--precision", "bf16", "--runs-per-gpu", per_gpu, *SMALL)
        done = sum(r["status"] == "done" for r in rows)
        per_hour = done / wall * 3600 if wall > 0 else 0.0
        base = base or per_hour
        peaks = [r["estimate"]["peak_mb"] for r in rows if r.get("estimate")]
        errors = sorted({r["error"] for r in rows if r["status"] != "done" and r["error"]} | ({err} if err else set()))
        print(f"{label:30} {per_gpu:>7} {done:5} {at_once(rows):7} {wall:7.1f} {per_hour:7.0f} "
              f"{per_hour / base if base else 0:5.2f} {max(peaks, default=0):12.0f}  {'; '.join(errors)[:160]}")

# (e) bf16 against fp32, with the CUDA width buckets (default) and without (multiples of 8, as before)
print(f"\n{'method':8} {'prec':5} {'buckets':7} {'status':8} {'samples/s':>9} {'train s':>7} {'wall s':>7} {'acc %':>6}")
for method in ("full", "lora"):
    for prec in ("fp32", "bf16"):
        for buckets in ("1", "0"):
            rows, wall, err = cli("run", "--method", method, "--precision", prec, *SMALL,
                                  env={"PEFT_TUI_CUDA_BUCKETS": buckets})
            row = rows[0] if rows else {"status": "none", "result": None, "error": err}
            r = row["result"] or {}
            print(f"{method:8} {prec:5} {'on' if buckets == '1' else 'off':7} {row['status']:8} "
                  f"{r.get('samples_per_s') or 0:9.0f} {r.get('train_time_s') or 0:7.1f} {wall:7.1f} "
                  f"{100 * (r.get('accuracy') or 0):6.1f}  {row['error'] or err}")
PY
