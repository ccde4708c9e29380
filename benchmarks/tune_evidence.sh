#!/usr/bin/env bash
# Issue 16's evidence (README, "Tuning evidence"): `peft-tui tune` on full fine-tuning, LoRA and adapters with
# the default pruner, on the IMDB subset and on AG News (2,000 training rows), then benchmarks/pruning.py
# runs each pruned trial to its end, to set the study's cost against the same trials unpruned.
#   bash benchmarks/tune_evidence.sh [imdb] [ag_news]      (env: TRIALS=8 SEEDS=3 STORE=DIR OUT=DIR)
# Writes $OUT/tune_<set>.json (the whole study, `tune --json`), $OUT/pruning_<set>.{json,txt}.
# IMDB: 100 training reviews (imdb_train100.csv); 150 validation and 350 test reviews split once, stratified,
# from imdb_test500.csv. AG News: a stratified 2,858-row sample of ag_news_test.csv, split 70/15/15 by the
# study (2,000 train, 429 validation, 429 test), the same split for every trial and final seed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EXE=$(dirname "$PY")/peft-tui
SHARED=${SHARED:-../shared/datasets}
OUT=${OUT:-benchmarks/evidence}
STORE=${STORE:-$(mktemp -d)/store}
TRIALS=${TRIALS:-8}
EXTRA=${EXTRA:-}  # e.g. "--max-length 64" (as word-split options for every study)
SEEDS=${SEEDS:-3}
SETS=${*:-imdb ag_news}
mkdir -p "$OUT" "$STORE"
SPLITS="$STORE/../imdb-splits"
mkdir -p "$SPLITS"
"$PY" - "$SHARED/imdb/imdb_test500.csv" "$SPLITS" <<'PYEOF'
import csv, random, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
rng = random.Random(0)
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r)
val, test = [], []
for label in sorted(by):
    group = by[label]
    rng.shuffle(group)
    val += group[:75]
    test += group[75:]
for name, part in (("imdb_val150.csv", val), ("imdb_test350.csv", test)):
    with open(f"{sys.argv[2]}/{name}", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows({"text": r["text"], "label": r["label"]} for r in part)
PYEOF
for set in $SETS; do
  case $set in
    imdb) args=(--data "$SHARED/imdb/imdb_train100.csv" --set "data.val_source=$SPLITS/imdb_val150.csv"
                --set "data.test_source=$SPLITS/imdb_test350.csv") ;;
    ag_news) args=(--data "$SHARED/ag_news/ag_news_test.csv" --set data.limit=2858) ;;
    *) echo "unknown set $set: use imdb or ag_news" >&2; exit 2 ;;
  esac
  echo "== $set: tune (store $STORE) $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)"
  start=$(date +%s)
  "$EXE" tune --methods full,lora,adapters --trials "$TRIALS" --seeds "$SEEDS" --store "$STORE" --study "$set" \
    "${args[@]}" $EXTRA --json > "$OUT/tune_$set.json"
  echo "== $set: tune took $(( $(date +%s) - start )) s; pruned trials to their end:"
  "$PY" benchmarks/pruning.py --store "$STORE" --study "$set" --complete --json "$OUT/pruning_$set.json" \
    | tee "$OUT/pruning_$set.txt"
done
