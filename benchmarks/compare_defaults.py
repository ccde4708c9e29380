"""The seed's experiment as a user runs it: `peft-tui compare` on the embedded MiniLM and the default
synthetic set. Prints the table, the wall time, and each target of issue 2 with PASS/FAIL:
  - the whole compare (3 methods + TF-IDF) finishes in <= 300 s on this machine
  - LoRA and adapters land within 2 accuracy points of full fine-tuning
  - LoRA and adapters train < 2% of the parameters
  - TF-IDF stays below 90% while fine-tuned MiniLM (full) clears 95%
and (issue 19) runs per hour, and how many texts the LP-FT probe encoded against read from the feature
cache (a comparison should encode them once).
Usage: python benchmarks/compare_defaults.py [--store DIR] [extra peft-tui compare args]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    store = tempfile.mkdtemp(prefix="peft-bench-")
    exe = str(Path(sys.executable).with_name("peft-tui"))
    cmd = [exe, "compare", "--store", store, "--json", *sys.argv[1:]]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        print(out.stderr[-3000:])
        return out.returncode
    table = {r["method"]: r for r in json.loads(out.stdout)["table"]}
    print(f"{'method':10} {'acc %':>7} {'F1 %':>7} {'trainable':>11} {'train %':>8} {'time s':>7} {'samples/s':>9} {'peak MB':>8}")
    def cell(value, spec: str, scale: float = 1.0) -> str:  # a column the row has not (TF-IDF's memory): '-'
        width = int(spec.split(".")[0].rstrip(",d") or 0)
        return f"{'-':>{width}}" if value is None else format(value * scale if scale != 1.0 else value, spec)

    for m, r in table.items():
        print(f"{m:10} {cell(r['accuracy'], '7.2f', 100)} {cell(r['f1'], '7.2f', 100)} "
              f"{cell(r['trainable_params'], '11,d')} {cell(r['trainable_pct'], '8.3f')} {cell(r['train_time_s'], '7.1f')} "
              f"{cell(r['samples_per_s'], '9.0f')} {cell(r['peak_memory_mb'], '8.0f')}")
    print(f"\nwall time of the whole compare: {wall:.1f} s ({len(table)} runs: {3600 * len(table) / wall:.0f} runs per hour)")
    encoded = cached = 0
    from peft_tui.engine.store import Store

    st = Store(store)
    for row in st.list():
        extra = (row.get("result") or {}).get("extra") or {}
        encoded += extra.get("head_init_texts_encoded", 0) + extra.get("texts_encoded", 0)
        cached += extra.get("head_init_texts_cached", 0) + extra.get("texts_cached", 0)
    print(f"LP-FT probe features: {encoded} texts encoded, {cached} read from the store's cache")
    if not {"full", "lora", "adapters", "tfidf"} <= set(table):
        return 0  # another set of methods: the default comparison's targets do not apply
    full = table["full"]["accuracy"]
    checks = [
        ("compare <= 300 s", wall <= 300, f"{wall:.0f} s"),
        ("full >= 95%", full >= 0.95, f"{100 * full:.1f}%"),
        ("tfidf < 90%", table["tfidf"]["accuracy"] < 0.90, f"{100 * table['tfidf']['accuracy']:.1f}%"),
    ]
    for m in ("lora", "adapters"):
        gap = 100 * (full - table[m]["accuracy"])
        checks.append((f"{m} within 2 points of full", gap <= 2.0, f"gap {gap:+.2f} points"))
        checks.append((f"{m} < 2% trainable", table[m]["trainable_pct"] < 2.0, f"{table[m]['trainable_pct']:.2f}%"))
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name:32} {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
