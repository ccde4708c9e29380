"""What a finished run leaves behind, put to use: rebuild its model, predict with it, export it.

    load_run(store, run_id)          -> LoadedRun(model, tokenizer, config, label_names)
    predict(loaded, texts, pairs)    -> [Prediction(label, probabilities)]
    export_run(store, run_id, out, merge) -> ExportResult (what was written, and why)

The model is rebuilt the way the trainer built it: a fresh base from `models.load_model` with the
run's model, label count and seed, then the method's own `load` from the run folder. UI-free.

A stored config (a row of runs.db, an export's export.json) is data other people hand around: its
`trust_remote_code` is never obeyed. The model runs its own code only when the caller passes
`trust_remote_code` as True, i.e. the user gave the command --trust-remote-code (RunConfig.from_stored).
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_tui.config import RunConfig
from peft_tui.errors import ConfigError, first_line

# methods whose rebuilt model is a stock transformers classifier (nothing to merge)
PLAIN = ("full", "head", "bitfit")
EXPORT_FILE = "export.json"


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    config: RunConfig
    label_names: list[str]
    run_id: int | None = None
    device: str = "cpu"


@dataclass
class Prediction:
    label: str
    index: int
    probabilities: dict[str, float]


@dataclass
class ExportResult:
    kind: str  # "merged" | "model" | "adapter" | "weights"
    folder: Path
    message: str
    files: list[str] = field(default_factory=list)


def _finished_row(store, run_id: int) -> dict:
    from peft_tui.engine.methods import get_method

    row = store.get(run_id)
    if row["status"] != "done" or not row["result"]:
        raise ConfigError(f"run {run_id} is {row['status']}, not done: only finished runs have trained weights")
    if get_method(row["method"]).is_baseline:
        raise ConfigError(f"run {run_id} is the {row['method']} baseline: it keeps no model to predict with or "
                          "export; pick a fine-tuning run")
    return row


def rebuild(folder: Path, config: RunConfig, num_labels: int, device: str = "cpu"):
    """A run's trained model from its folder (eval mode) and its tokenizer."""
    from peft_tui.engine import models
    from peft_tui.engine.methods import get_method

    method = get_method(config.method)
    params = method.resolve(config.params)
    base = models.load_model(config.model, num_labels, config.seed, config.trust_remote_code, config.pooling)
    try:
        with warnings.catch_warnings():  # peft / transformers deprecation chatter, not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            model = method.load(base, Path(folder), params)
    except ConfigError:
        raise
    except (FileNotFoundError, OSError, ValueError) as e:
        raise ConfigError(f"the weights in {folder} could not be loaded ({first_line(e, 200)}): "
                          "was the run folder changed?") from None
    tokenizer = models.load_tokenizer(config.model, config.trust_remote_code)
    return model.to(device).eval(), tokenizer


def stored_config(store, run_id: int, trust_remote_code: bool = False) -> RunConfig:
    """A finished run's config as `load_run` will use it, checked without loading anything."""
    return RunConfig.from_stored(_finished_row(store, run_id)["config"], trust_remote_code, f"run {run_id}")


def load_run(store, run_id: int, device: str = "cpu", trust_remote_code: bool = False) -> LoadedRun:
    row = _finished_row(store, run_id)
    config = RunConfig.from_stored(row["config"], trust_remote_code, f"run {run_id}")
    names = [str(n) for n in row["result"]["label_names"]]
    model, tokenizer = rebuild(store.run_dir(run_id), config, len(names), device)
    return LoadedRun(model, tokenizer, config, names, run_id, device)


def load_export(folder: str | Path, device: str = "cpu", trust_remote_code: bool = False) -> LoadedRun:
    """Rebuild an exported run (any method) from the folder `export_run` wrote."""
    folder = Path(folder)
    meta_path = folder / EXPORT_FILE
    if not meta_path.is_file():
        raise ConfigError(f"{folder} has no {EXPORT_FILE}: pass a folder written by `peft-tui export`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        config = RunConfig.from_dict(meta["config"])
        names = [str(n) for n in meta["label_names"]]
    except (OSError, ValueError, KeyError, TypeError) as e:  # ValueError: bad JSON or a ConfigError
        raise ConfigError(f"{meta_path} is damaged ({first_line(e, 160)}): export the run again") from None
    config = RunConfig.from_stored(config.to_dict(), trust_remote_code, f"the export in {folder}")
    model, tokenizer = rebuild(folder, config, len(names), device)
    return LoadedRun(model, tokenizer, config, names, meta.get("run_id"), device)


def predict(run: LoadedRun, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64) -> list[Prediction]:
    """Label and class probabilities per text, tokenised and padded as the trainer does."""
    import torch

    from peft_tui.engine.batching import collate, tokenize

    if pairs is not None and len(pairs) != len(texts):
        raise ConfigError(f"{len(texts)} texts but {len(pairs)} second sentences: give one pair per text")
    ids = tokenize(run.tokenizer, texts, run.config.max_length, pairs)
    pad_id = run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    probs: list[list[float]] = [[] for _ in ids]
    run.model.eval()
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            batch = order[b : b + batch_size]
            x, m, _ = collate(ids, [0] * len(ids), batch, pad_id, run.device)
            p = torch.softmax(run.model(input_ids=x, attention_mask=m).logits.float(), dim=-1)
            for i, row in zip(batch, p.tolist()):
                probs[i] = row
    out = []
    for row in probs:
        k = max(range(len(row)), key=row.__getitem__)
        out.append(Prediction(run.label_names[k], k, {n: float(v) for n, v in zip(run.label_names, row)}))
    return out


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def _set_labels(model, names: list[str]) -> None:
    model.config.id2label = {i: n for i, n in enumerate(names)}
    model.config.label2id = {n: i for i, n in enumerate(names)}


def _prepare_out(out: Path) -> bool:
    """Make the (new or empty) export folder; True when it was created here."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"export folder {out} exists and is not empty: pass a new folder with --out")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return created


def _save_plain(model, tokenizer, names: list[str], out: Path) -> None:
    from peft_tui.engine.weights import save_pretrained

    _set_labels(model, names)
    save_pretrained(model, out)
    save_pretrained(tokenizer, out)


def export_run(store, run_id: int, out: str | Path, merge: bool = False, trust_remote_code: bool = False) -> ExportResult:
    """Write a run's model to `out` (see `_export`). A failed export leaves nothing behind in `out`;
    a full disk is one line ("disk full at <path>")."""
    from peft_tui.engine.weights import disk_full_at

    out = Path(out).expanduser()
    row = _finished_row(store, run_id)
    config = RunConfig.from_stored(row["config"], trust_remote_code, f"run {run_id}")  # before anything is written
    created = _prepare_out(out)
    try:
        return _export(store, row, config, out, merge)
    except BaseException as e:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for item in out.iterdir():
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
        path = disk_full_at(e)
        if path is not None:
            raise ConfigError(f"disk full at {path or out}: free some space and export again") from None
        raise


def _export(store, row: dict, config: RunConfig, out: Path, merge: bool) -> ExportResult:
    """Write a run's model to `out`:
    - full / head / bitfit: a plain transformers folder (the rebuilt model + tokenizer);
    - lora / dora / ia3 / peft-json with `merge`: the adapter merged into the base weights
      (`merge_and_unload`), a plain transformers folder;
    - otherwise (no --merge, or a method that cannot merge: adapters, prefix, prompt): the run's
      trained weights + config + tokenizer + README.md with loading instructions (`load_export`)."""
    from peft_tui.engine.weights import atomic_write_text, save_pretrained, writing

    run_id = row["id"]
    names = [str(n) for n in row["result"]["label_names"]]
    run_folder = store.run_dir(run_id)
    model, tokenizer = rebuild(run_folder, config, len(names))
    loads_plain = ("AutoModelForSequenceClassification.from_pretrained(folder)")

    if config.method in PLAIN:
        _save_plain(model, tokenizer, names, out)
        _write_readme(out, config, names, row, "model", loads_plain)
        note = "" if not merge else " (nothing to merge: the weights are a plain model already)"
        return ExportResult("model", out, f"exported {config.method} run {run_id} as a transformers model{note}",
                            _files(out))

    from peft import PeftModel

    why = ""
    if merge and isinstance(model, PeftModel):
        try:
            merged = model.merge_and_unload()
        except Exception as e:  # noqa: BLE001 - prompt learning has no weights to merge, say so
            why = first_line(e, 160)
        else:
            _save_plain(merged, tokenizer, names, out)
            _write_readme(out, config, names, row, "merged", loads_plain)
            return ExportResult("merged", out, f"merged {config.method} run {run_id} into a plain transformers model",
                                _files(out))
    elif merge:
        why = "its bottleneck layers add non-linear modules, not a weight update"

    # the trained weights as the run saved them, plus what rebuilds them
    for item in run_folder.iterdir():
        if item.name in ("config.json", "result.json"):
            continue
        dest = out / item.name
        with writing(dest):
            shutil.copytree(item, dest) if item.is_dir() else shutil.copy2(item, dest)
    save_pretrained(tokenizer, out / "tokenizer")
    meta = {"run_id": run_id, "method": config.method, "label_names": names, "config": config.to_dict(),
            "result": {k: row["result"].get(k) for k in ("accuracy", "f1", "trainable_params", "total_params")}}
    atomic_write_text(out / EXPORT_FILE, json.dumps(meta, indent=2, default=str))
    kind = "adapter" if (out / "adapter").exists() else "weights"
    _write_readme(out, config, names, row, kind, "")
    if merge:
        message = (f"{config.method} cannot be merged into the base weights ({why}): "
                   f"exported its trained weights + loading instructions instead")
    else:
        message = f"exported {config.method} run {run_id}'s trained weights + loading instructions (--merge for a plain model)"
    return ExportResult(kind, out, message, _files(out))


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def _base_reference(model: str) -> str:
    if model == "minilm":
        from peft_tui.engine.models import minilm_path

        return str(minilm_path())
    return model


def _write_readme(out: Path, config: RunConfig, names: list[str], row: dict, kind: str, loads: str) -> None:
    from peft_tui.engine.weights import atomic_write_text
    from peft_tui.safe import safe_text

    res = row["result"]
    names = [safe_text(n) for n in names]  # labels from a data file: no escape sequences into the README
    lines = [
        f"# peft-tui export: run {row['id']} ({safe_text(row['name'])})",
        "",
        f"- method: `{config.method}` {json.dumps(config.params, sort_keys=True) if config.params else ''}",
        f"- base model: `{config.model}`; labels: {', '.join(f'{i}={n}' for i, n in enumerate(names))}",
        f"- test accuracy {100 * res['accuracy']:.2f}%, macro F1 {100 * res['f1']:.2f}% on `{row['data']}`",
        f"- max_length {config.max_length}" + (f"; sentence pairs (`{config.data.text_pair_col}`)"
                                               if config.data.text_pair_col else ""),
        "",
        "## Loading",
        "",
        "```python",
    ]
    if kind in ("merged", "model"):
        lines += [
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            "folder = \"" + str(out) + "\"",
            "model = AutoModelForSequenceClassification.from_pretrained(folder).eval()",
            "tokenizer = AutoTokenizer.from_pretrained(folder)",
            f"enc = tokenizer([\"some text\"], truncation=True, max_length={config.max_length}, return_tensors=\"pt\")",
            "label = model.config.id2label[model(**enc).logits.argmax(-1).item()]",
        ]
        what = ("The LoRA update is merged into the weights: this is a plain transformers model, no peft needed."
                if kind == "merged" else "A plain transformers model.")
    else:
        lines += [
            "# with peft-tui installed (any method):",
            "from peft_tui.engine.artifacts import load_export, predict",
            "",
            f"run = load_export(\"{out}\")",
            "print(predict(run, [\"some text\"]))",
        ]
        if kind == "adapter" and config.method not in ("prefix",) and config.model != "tiny":
            lines += [
                "",
                "# or with stock transformers + peft:",
                "from peft import PeftModel",
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                "",
                f"base = AutoModelForSequenceClassification.from_pretrained(\"{_base_reference(config.model)}\", "
                f"num_labels={len(names)})",
                f"model = PeftModel.from_pretrained(base, \"{out / 'adapter'}\").eval()",
                f"tokenizer = AutoTokenizer.from_pretrained(\"{out / 'tokenizer'}\")",
            ]
        what = (f"`{config.method}` keeps its trained weights apart from the base model "
                f"(files: {', '.join(sorted(p.name for p in out.iterdir()))}); the base is rebuilt from "
                f"`{config.model}` with seed {config.seed}.")
    lines += ["```", "", what, ""]
    atomic_write_text(out / "README.md", "\n".join(lines))
