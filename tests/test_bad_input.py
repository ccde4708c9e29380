"""Bad input: each gets one line naming the problem and the fix, exit code 2, no traceback, and nothing
written to the store. Through the CLI (typer's CliRunner) and through config/loaders directly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.config import ConfigError, DataConfig, RunConfig
from peft_tui.engine.methods import validate as validate_run

runner = CliRunner()
TINY = ["--model", "tiny", "--set", "data.size=120", "--epochs", "1", "--batch-size", "16"]


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Small bad data files and model folders, made here."""
    d = tmp_path_factory.mktemp("bad")
    good_rows = "".join(f"row {i},{i % 2}\n" for i in range(20))
    (d / "ok.csv").write_text("text,label\n" + good_rows)
    (d / "empty.csv").write_text("")
    (d / "header.csv").write_text("text,label\n")
    (d / "binary.csv").write_bytes(b"text,label\n\x00\x01\x02\xff\x00")
    (d / "latin1.csv").write_bytes("text,label\ncaf\xe9,1\nthe,0\n".encode("latin-1"))
    (d / "nocol.csv").write_text("sentence,label\nhi,1\nho,0\n")
    (d / "nolabel.csv").write_text("text,target\nhi,1\nho,0\n")
    (d / "nan.csv").write_text("text,label\nhi,1\nho,\nha,0\n")
    (d / "mixed.csv").write_text("text,label\nhi,1\nho,pos\nha,0\n")
    (d / "frac.csv").write_text("text,label\nhi,1.5\nho,0\n")
    (d / "single.csv").write_text("text,label\nhi,1\nho,1\nha,1\n")
    (d / "notext.csv").write_text("text,label\n ,1\n,0\n\t,0\n")  # every text empty or whitespace
    (d / "unseen.csv").write_text("text,label\nhi,7\nho,0\n")
    (d / "weird.xlsx").write_text("x")
    (d / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{not json\n')
    (d / "a-file").write_text("x")
    _model_folders(d)
    return d


def _model_folders(d: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(d / "short_model")
    cfg.max_position_embeddings = 512
    BertForSequenceClassification(cfg).save_pretrained(d / "good_model")
    (d / "noweights").mkdir()
    shutil.copy(d / "good_model" / "config.json", d / "noweights" / "config.json")
    (d / "pickle_only").mkdir()
    shutil.copy(d / "good_model" / "config.json", d / "pickle_only" / "config.json")
    (d / "pickle_only" / "pytorch_model.bin").write_bytes(b"not loaded")
    (d / "noconfig").mkdir()
    shutil.copy(d / "good_model" / "model.safetensors", d / "noconfig" / "model.safetensors")
    shutil.copytree(d / "good_model", d / "mismatch")
    c = json.loads((d / "mismatch" / "config.json").read_text())
    c["hidden_size"] = 64
    (d / "mismatch" / "config.json").write_text(json.dumps(c))
    shutil.copytree(d / "good_model", d / "truncated")
    blob = (d / "good_model" / "model.safetensors").read_bytes()
    (d / "truncated" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    shutil.copytree(d / "good_model", d / "garbage")
    (d / "garbage" / "model.safetensors").write_bytes(b"\xff" * 64)
    shutil.copytree(d / "good_model", d / "badjson")
    (d / "badjson" / "config.json").write_text("{not json")


def one_line_exit_2(args: list[str], needle: str, store: Path) -> str:
    res = runner.invoke(app, args + ["--store", str(store)])
    err = res.stderr.strip()
    assert res.exit_code == 2, (res.exit_code, res.output, repr(res.exception))
    assert "Traceback" not in res.output and len(err.splitlines()) == 1, res.output
    assert err.startswith("error: ") and needle in err, err
    print(f"\nBAD-INPUT {' '.join(args[1:] if args[0] == 'run' else args)} -> {err}")  # listed with -s
    return err


# --------------------------------------------------------------------------------- CLI: run values
RUN_CASES = [
    (["--method", "nope"], "unknown method 'nope': use one of"),
    (["--model", "no/such/model"], "model folder 'no/such/model' does not exist"),
    (["--model", "./missing-folder"], "model folder './missing-folder' does not exist"),
    (["--precision", "fp64"], "unknown precision 'fp64'"),
    (["--precision", "fp16", "--device", "cpu"], "precision fp16 needs a CUDA GPU"),
    (["--device", "gpu"], "unknown device 'gpu': use auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], "cuda:99"),
    (["--lr", "0"], "lr=0.0 is out of range"),
    (["--lr", "-1"], "lr=-1.0 is out of range"),
    (["--lr", "5"], "lr=5.0 is out of range"),
    (["--epochs", "0"], "epochs=0 must be at least 1"),
    (["--epochs", "-2"], "epochs=-2 must be at least 1"),
    (["--batch-size", "0"], "batch_size=0 must be at least 1"),
    (["--batch-size", "-4"], "batch_size=-4 must be at least 1"),
    (["--method", "lora", "--set", "r=0"], "r=0 must be positive"),
    (["--method", "lora", "--set", "r=-3"], "r=-3 must be positive"),
    (["--method", "lora", "--set", "alpha=0"], "alpha=0.0 must be positive"),
    (["--method", "lora", "--set", "alpha=-1"], "alpha=-1.0 must be positive"),
    (["--method", "lora", "--set", "dropout=1.5"], "dropout=1.5 must be in [0, 1)"),
    (["--method", "lora", "--set", "dropout=-0.1"], "dropout=-0.1 must be in [0, 1)"),
    (["--method", "adapters", "--set", "size=-1"], "size=-1"),
    (["--method", "adapters", "--set", "reduction_factor=0"], "reduction_factor=0"),
    (["--method", "prefix", "--set", "num_virtual_tokens=0"], "num_virtual_tokens=0 must be positive"),
    (["--set", "max_length=4096"],
     "max_length=4096 is above the 512-token limit of model 'tiny': use --set max_length=512"),
    (["--set", "max_length=4"], "max_length=4 is out of range"),
    (["--set", "warmup_ratio=1.5"], "warmup_ratio=1.5 must be in [0, 1)"),
    (["--set", "data.val_fraction=0.95"], "val_fraction=0.95 is out of range"),
    (["--method", "lora", "--set", "nokey=1"], "unknown key 'nokey' for method 'lora'"),
    (["--method", "full", "--set", "r=4"], "unknown key 'r' for method 'full'"),
    (["--set", "data.nokey=1"], "unknown data key 'nokey'"),
    (["--set", "epochs=abc"], "epochs='abc' is not a valid int"),
    (["--set", "lr=fast"], "lr='fast' is not a valid float: write a float, or lr=none for the default"),
    (["--method", "lora", "--set", "r=abc"], "r='abc' is not a valid int"),
    (["--method", "lora", "--set", "use_dora=maybe"], "use_dora='maybe' is not a valid bool"),
    (["--set", "epochs"], "--set 'epochs' is not key=value"),
    (["--name", "../x"], "run name '../x' is not allowed"),
    (["--name", "/etc/passwd"], "run name '/etc/passwd' is not allowed"),
]


@pytest.mark.parametrize("args,needle", RUN_CASES, ids=[" ".join(a) for a, _ in RUN_CASES])
def test_run_rejects_bad_values(tmp_path, args, needle):
    one_line_exit_2(["run", *TINY, *args], needle, tmp_path / "s")
    assert not (tmp_path / "s").exists()  # nothing half-written: the store is not even created


def test_cuda_on_a_cpu_machine(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: 'cuda' is valid here")
    one_line_exit_2(["run", *TINY, "--device", "cuda"], "has no usable CUDA GPU: use --device cpu", tmp_path / "s")
    one_line_exit_2(["run", *TINY, "--device", "cuda:3"], "has no usable CUDA GPU", tmp_path / "s")


def test_cuda_index_that_does_not_exist(monkeypatch):
    """`cuda:3` on a one-GPU box (simulated): names the GPUs there are."""
    import torch

    from peft_tui.engine.trainer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"device 'cuda:3' does not exist: this machine has 1 GPU\(s\), cuda:0"):
        resolve_device("cuda:3")
    assert resolve_device("cuda") == "cuda:0"


# ---------------------------------------------------------------------------------- CLI: data files
DATA_CASES = [
    ("missing.csv", "does not exist: check the path"),
    ("empty.csv", "is empty: it needs a header row and examples"),
    ("header.csv", "has a header but no rows"),
    ("binary.csv", "looks binary"),
    ("latin1.csv", "is not UTF-8 text: re-save it as UTF-8"),
    ("nocol.csv", "column 'text' not found"),
    ("nolabel.csv", "column 'label' not found"),
    ("nan.csv", "label(s) in"),
    ("mixed.csv", "mix numbers and strings"),
    ("frac.csv", "are fractional numbers"),
    ("single.csv", "has a single class"),
    ("notext.csv", "have an empty 'text' (or only whitespace)"),
    ("weird.xlsx", "unknown type"),
    ("bad.jsonl", "could not be parsed"),
    (".", "is a folder"),
]


@pytest.mark.parametrize("name,needle", DATA_CASES, ids=[n for n, _ in DATA_CASES])
def test_run_rejects_bad_data_files(files, tmp_path, name, needle):
    one_line_exit_2(["run", *TINY, "--data", str(files / name)], needle, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_validation_file_with_unseen_classes(files, tmp_path):
    one_line_exit_2(["run", *TINY, "--data", str(files / "ok.csv"), "--val-data", str(files / "unseen.csv")],
                    "has classes not in training: 7", tmp_path / "s")


def test_unreadable_data_file(files, monkeypatch):
    """Root reads anything, so permission denied is simulated at the reader."""
    import pandas as pd

    from peft_tui.engine.data import load_splits

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pd, "read_csv", denied)
    with pytest.raises(ConfigError, match="cannot be read \\(permission denied\\)"):
        load_splits(DataConfig(source=str(files / "ok.csv")), 0)


# ---------------------------------------------------------------------------------- CLI: model folders
MODEL_CASES = [
    ("noweights", "has no weights (*.safetensors)"),
    ("pickle_only", "has only pickle (.bin/.pt) weights"),
    ("noconfig", "has no config.json"),
    ("mismatch", "config.json does not match the weights"),
    ("truncated", "is corrupted or truncated"),
    ("garbage", "is corrupted or truncated"),
    ("badjson", "config.json could not be read"),
    ("a-file", "is a file: pass the folder"),
    ("short_model", "max_length=128 is above the 64-token limit of model"),
]


@pytest.mark.parametrize("name,needle", MODEL_CASES, ids=[n for n, _ in MODEL_CASES])
def test_run_rejects_bad_model_folders(files, tmp_path, name, needle):
    args = ["run", "--model", str(files / name), "--set", "data.size=120", "--epochs", "1"]
    one_line_exit_2(args, needle, tmp_path / "s")


def test_good_model_folder_passes_preflight(files):
    from peft_tui.engine.trainer import preflight

    preflight(RunConfig(model=str(files / "good_model"), data=DataConfig(size=120), device="cpu"))
    preflight(RunConfig(model=str(files / "short_model"), max_length=64, data=DataConfig(size=120), device="cpu"))


def test_corrupted_safetensors_at_load_time_is_one_line(files):
    """If the file is damaged after preflight (or preflight is skipped), loading still gives one line."""
    from peft_tui.engine.models import load_model

    with pytest.raises(Exception) as info:
        load_model(str(files / "truncated"), 2, 0)
    text = str(info.value)
    assert "\n" not in text.strip()


# ---------------------------------------------------------------------------------- CLI: store, run ids
def test_store_path_is_a_file(files):
    one_line_exit_2(["runs"], "is a file: pass a folder with --store", files / "a-file")
    one_line_exit_2(["run", *TINY], "is a file: pass a folder with --store", files / "a-file")


def test_store_read_only(tmp_path, monkeypatch):
    """Running as root, chmod does not stop writes: the write probe is made to fail instead."""
    real = Path.write_text

    def read_only(self, *a, **k):
        if self.name == ".write-test":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", read_only)
    one_line_exit_2(["runs"], "is not writable (Permission denied): pass another folder with --store", tmp_path / "s")


def test_store_database_that_is_not_a_database(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "runs.db").write_bytes(b"this is not sqlite" * 100)
    one_line_exit_2(["runs"], "cannot be used (file is not a database)", tmp_path / "s")


@pytest.mark.parametrize("cmd", [["show", "999"], ["resume", "999"]])
def test_unknown_run_id(tmp_path, cmd):
    one_line_exit_2(cmd, "run 999 does not exist", tmp_path / "s")


# ---------------------------------------------------------------------------------- config directly
@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(method="nope"), "unknown method"),
        (dict(epochs=0), "epochs=0"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(lr=0.0), "lr=0.0"),
        (dict(lr=-1e-3), "lr=-0.001"),
        (dict(max_length=7), "max_length=7"),
        (dict(weight_decay=-1.0), "weight_decay=-1.0"),
        (dict(grad_clip=-1.0), "grad_clip=-1.0"),
        (dict(eval_every=-1), "eval_every"),
        (dict(patience=-1), "patience"),
        (dict(precision="int4"), "unknown precision"),
        (dict(device="tpu"), "unknown device"),
        (dict(name=".."), "run name '..' is not allowed"),
        (dict(name="a/b"), "run name 'a/b' is not allowed"),
        (dict(name="x" * 65), "is not allowed"),
        (dict(method="lora", params={"r": 0}), "r=0 must be positive"),
        (dict(method="lora", params={"r": 2.5}), "has the wrong type"),
        (dict(method="lora", params={"r": True}), "has the wrong type"),
        (dict(method="lora", params={"nope": 1}), "has no parameter 'nope'"),
        (dict(method="adapters", params={"variant": "x"}), "is not allowed: use one of"),
        (dict(data=DataConfig(size=5)), "size=5 is too small"),
        (dict(data=DataConfig(label_noise=0.7)), "label_noise=0.7"),
        (dict(data=DataConfig(limit=-1)), "limit=-1"),
        (dict(data=DataConfig(val_fraction=0.5, test_fraction=0.45)), "leaves almost no training data"),
        (dict(data=DataConfig(source="")), "data source is empty"),
    ],
)
def test_validate_one_line(kw, needle):
    with pytest.raises(ConfigError) as info:
        validate_run(RunConfig(**kw))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_from_dict_unknown_key():
    with pytest.raises(ConfigError, match="unknown config keys: 'bogus'"):
        RunConfig.from_dict({"bogus": 1})
