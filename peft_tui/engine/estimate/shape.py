"""The estimate's inputs: the model's config (no weights read) and the training rows' token lengths, and
the wrapped model's shape, read from a skeleton on the meta device."""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from peft_tui.config import ConfigError, RunConfig
from peft_tui.engine.estimate.calibrate import leaf_modules

# Sibling projections that read the same input tensor: autograd keeps it once.
SHARED_INPUT = ({"query", "key", "value"}, {"q_proj", "k_proj", "v_proj"}, {"q_lin", "k_lin", "v_lin"},
                {"gate_proj", "up_proj"})


ATTENTION_INPUTS = re.compile(r"\.(query|key|value|q_proj|k_proj|v_proj|q_lin|k_lin|v_lin|c_attn|qkv_proj|Wqkv)\b")


LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


# ------------------------------------------------------------------------------------------------
# inputs: the model's config and the training rows' token lengths
# ------------------------------------------------------------------------------------------------
def model_config(name: str, num_labels: int, trust_remote_code: bool = False):
    """The transformers config of model `name` ("tiny", "minilm", a folder, a hub id) with `num_labels`;
    no weights are read."""
    from transformers import AutoConfig, BertConfig

    from peft_tui.engine import models

    if name == "tiny":
        vocab = models.load_tokenizer("tiny").vocab_size
        return BertConfig(vocab_size=vocab, num_labels=num_labels, **models.TINY)  # type: ignore[call-arg]
    from peft_tui.engine.hub import hub_kwargs

    src = str(models.minilm_path()) if name == "minilm" else str(Path(name).expanduser())
    hub = {} if name == "minilm" or Path(src).exists() else hub_kwargs()
    if Path(src).is_dir():  # the size it describes, by arithmetic, before transformers builds anything from it
        models.check_config_size(models.read_config_json(Path(src), name), name)
    try:
        mc = AutoConfig.from_pretrained(src, num_labels=num_labels, trust_remote_code=trust_remote_code, **hub)
    except Exception as e:  # noqa: BLE001 - missing folder, hub offline, bad JSON
        from peft_tui.errors import first_line

        raise ConfigError(f"model {name!r}: its config could not be read ({first_line(e)[:160]})") from None
    models.check_config_size(mc.to_dict(), name)  # a hub config too: model_shape builds from it next
    return mc


def inputs_for(config: RunConfig, data=None, cache_dir: Path | None = None):
    """(model config, token lengths of the training rows, untruncated) for `estimate`. `data`: the
    config's DataSplits when already loaded (`trainer.preflight` returns them), else loaded here.
    With `cache_dir` (the store's cache) and a model whose files are here (the embedded MiniLM, `tiny`, a
    local folder), neither transformers nor torch is imported when the store has seen this model, method
    and data before: the lengths and the shape are read from the cache (`ModelFacts`, `shape_of`)."""
    from peft_tui.engine.data import load_splits
    from peft_tui.engine.estimate.lengths import cached_lengths

    data = data if data is not None else load_splits(config.data, config.seed)
    facts = model_facts(config, data.num_labels, cache_dir) if cache_dir is not None else None
    if facts is None:
        from peft_tui.engine.models import load_tokenizer

        tokenizer = load_tokenizer(config.model, config.trust_remote_code)
        lengths = cached_lengths(None, config.model, config.trust_remote_code, data.train.texts, data.train.pairs,
                                 tokenizer=tokenizer)
        return model_config(config.model, data.num_labels, config.trust_remote_code), lengths
    lengths = cached_lengths(cache_dir, config.model, config.trust_remote_code, data.train.texts, data.train.pairs)
    return facts, lengths


# ------------------------------------------------------------------------------------------------
# the shape without torch: what a model, a method and its parameters make, kept in the store's cache
# ------------------------------------------------------------------------------------------------
SHAPE_FORMAT = "peft-tui-shape-v1"


@dataclass
class ModelFacts:
    """A model known by its files (no transformers config built): `key` names them (the config and the
    pooling files, the library versions), `cache_dir` is where shapes built from them are kept, and
    `real()` builds the transformers config when a shape is not cached yet (imports transformers)."""

    name: str
    num_labels: int
    trust_remote_code: bool
    key: str
    cache_dir: Path
    _real: object = None

    def real(self):
        if self._real is None:
            self._real = model_config(self.name, self.num_labels, self.trust_remote_code)
        return self._real


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("torch", "transformers", "peft"):
        try:
            out.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist}=none")
    return ",".join(out)


def model_facts(config: RunConfig, num_labels: int, cache_dir: Path) -> ModelFacts | None:
    """`config.model` by its files (None for a hub id, whose config is fetched: `model_config`). Only the
    size a folder's config.json describes is checked here (by arithmetic, as `model_config` does)."""
    import hashlib

    from peft_tui.engine import models

    folder = models.minilm_path() if config.model in ("minilm", "tiny") else models._model_folder(config.model)
    if folder is None:
        return None
    h = hashlib.sha256(f"{SHAPE_FORMAT}\0{config.model}\0{num_labels}\0{config.trust_remote_code}\0".encode())
    h.update(_versions().encode())
    if config.model == "tiny":
        h.update(repr(sorted(models.TINY.items())).encode())
        names: tuple[str, ...] = ("tokenizer.json", "vocab.txt")  # its vocabulary size comes from the embedded tokenizer
    else:
        models.check_config_size(models.read_config_json(folder, config.model), config.model)
        names = ("config.json", "modules.json", "1_Pooling/config.json", "config_sentence_transformers.json")
    for name in names:
        p = folder / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return ModelFacts(config.model, num_labels, config.trust_remote_code, h.hexdigest(), Path(cache_dir))


def _shape_key(config: RunConfig, facts: ModelFacts) -> str:
    """The model's key, the method with its resolved parameters, the pooling asked for, and the code that
    builds the shape (this module and the method's own module: a change there is a new shape)."""
    import hashlib
    import inspect
    import json

    from peft_tui.engine.methods import get_method

    method = get_method(config.method)
    params = method.resolve(config.params)
    h = hashlib.sha256(f"{facts.key}\0{config.method}\0{config.pooling}\0".encode())
    h.update(json.dumps(params, sort_keys=True, default=repr).encode())
    for source in (__file__, inspect.getsourcefile(type(method).apply) or ""):
        try:
            h.update(Path(source).read_bytes())
        except (OSError, TypeError):
            h.update(b"?")
    return h.hexdigest()


def shape_of(config: RunConfig, mc) -> tuple[Shape, int | None]:
    """(the wrapped model's Shape, the vocabulary size) for `estimate`: from the store's cache when `mc` is
    `ModelFacts` and this shape was built before, else built (`model_shape`, on the meta device: torch,
    transformers and the method's library) and, for `ModelFacts`, kept for the next command."""
    import json
    import os

    if not isinstance(mc, ModelFacts):
        return model_shape(config, mc), getattr(mc, "vocab_size", None)
    path = mc.cache_dir / f"shape-{_shape_key(config, mc)[:40]}.json"
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") == SHAPE_FORMAT:
            return Shape(**doc["shape"]), doc.get("vocab_size")
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # not kept yet, or damaged: built again
    real = mc.real()
    s = model_shape(config, real)
    vocab = getattr(real, "vocab_size", None)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"format": SHAPE_FORMAT, "shape": asdict(s), "vocab_size": vocab}))
        os.replace(tmp, path)
    except OSError:  # a read-only or full store: built again next time
        tmp.unlink(missing_ok=True)
    return s, vocab


# ------------------------------------------------------------------------------------------------
# the model's shape, from a skeleton on the meta device
# ------------------------------------------------------------------------------------------------
@dataclass
class Shape:
    """What the estimate needs to know about the wrapped model."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    attention_dropout: float
    hidden_dropout: float
    trainable: int
    total: int
    matrix_params: int  # weights of the linear layers: 2 FLOPs per weight per token forward
    trainable_matrix_params: int
    keep: list[str]  # per layer: "all", "upper" (from the attention output on) or "none"
    embeddings_keep: bool
    trainable_inputs: int  # per token, summed over layers: inputs kept by modules whose weights train
    modules: int  # leaf modules: the fixed cost of a step scales with them
    prefix_tokens: int  # extra key/value positions per layer (prefix tuning)
    prompt_tokens: int  # extra positions of the whole sequence (prompt tuning)
    act_kept: int  # feed-forward tensors of width `intermediate` kept per layer (gated MLP: 3)


class NotEstimable(ConfigError):
    """The model's architecture names its sizes in a way the estimate does not know: the run can still be
    queued, without an estimate (the only estimate failure that may go on; see engine/submit.py)."""


def _dims(mc) -> tuple[int, int, int, int]:
    try:
        layers = getattr(mc, "num_hidden_layers", None) or getattr(mc, "n_layers", None) or mc.n_layer
        hidden = mc.hidden_size
        heads = getattr(mc, "num_attention_heads", None) or getattr(mc, "n_heads", None) or mc.n_head
    except AttributeError as e:
        raise NotEstimable(f"the {type(mc).__name__} architecture cannot be estimated ({e})") from None
    inter = (getattr(mc, "intermediate_size", None) or getattr(mc, "hidden_dim", None)
             or getattr(mc, "n_inner", None) or 4 * hidden)
    return int(layers), int(hidden), int(inter), int(heads)


def _dropouts(mc) -> tuple[float, float]:
    attn = next((getattr(mc, k) for k in ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")
                 if isinstance(getattr(mc, k, None), (int, float))), 0.0)
    hid = next((getattr(mc, k) for k in ("hidden_dropout_prob", "dropout", "resid_pdrop")
                if isinstance(getattr(mc, k, None), (int, float))), 0.0)
    return float(attn), float(hid)


def model_shape(config: RunConfig, mc) -> Shape:
    """Build the classifier on the meta device, pool it as `models.load_model` does (a BERT pooler
    replaced by mean pooling trains nothing), wrap it with the method's own `apply`, and read the exact
    parameter counts and where gradients start."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from peft_tui.engine import pooling
    from peft_tui.engine.methods import get_method
    from peft_tui.engine.methods.peft_common import pools_last_token
    from peft_tui.engine.models import _model_folder
    from peft_tui.engine.weights import count_parameters, head_module_names

    method = get_method(config.method)
    params = method.resolve(config.params)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft's deprecated-API notices: not the user's business
        model = AutoModelForSequenceClassification.from_config(mc, trust_remote_code=config.trust_remote_code)
        folder = None if config.model == "tiny" else _model_folder(config.model)
        model = pooling.install(model, pooling.resolve(config.pooling, folder, model))  # as load_model does
        heads = tuple(head_module_names(model))
        base = model
        model = method.apply(model, params)
    trainable, total = count_parameters(model)
    layers, hidden, inter, n_heads = _dims(mc)
    attn_drop, hid_drop = _dropouts(mc)

    def in_head(name: str) -> bool:
        return any(f".{h}." in f".{name}" for h in heads)

    first, first_has_attention, body_wide = None, False, False
    for name, p in model.named_parameters():
        if not p.requires_grad or in_head(name):
            continue
        m = LAYER_INDEX.search("." + name)
        if m is None:  # embeddings, a prefix or prompt encoder: gradients reach every layer
            body_wide = True
            continue
        i = int(m.group(1))
        if first is None or i < first:
            first, first_has_attention = i, False
        if i == first and ATTENTION_INPUTS.search("." + name):
            first_has_attention = True
    if body_wide:
        keep = ["all"] * layers
    elif first is None:
        keep = ["none"] * layers
    else:
        keep = ["none"] * first + ["all" if first_has_attention else "upper"] + ["all"] * (layers - first - 1)

    matrix = trainable_matrix = inputs = 0
    shared_seen: set[tuple[str, frozenset]] = set()
    for name, mod in model.named_modules():
        in_layer = LAYER_INDEX.search(f".{name}.") is not None  # per-token work; the head sees one row
        if in_layer and (isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"):
            w = mod.weight
            matrix += w.numel()
            if w.requires_grad:  # its weight gradient needs its input
                trainable_matrix += w.numel()
                parent, _, child = name.rpartition(".")
                group = next((frozenset(g) for g in SHARED_INPUT if child in g), None)
                if group is None or (parent, group) not in shared_seen:
                    inputs += w.shape[1] if isinstance(mod, torch.nn.Linear) else w.shape[0]
                if group is not None:
                    shared_seen.add((parent, group))
        drops = getattr(mod, "lora_dropout", None)
        if in_layer and drops is not None:  # peft LoRA: each adapted module's own dropout keeps its noise
            inputs += sum(mod.in_features for d in drops.values() if isinstance(d, torch.nn.Dropout) and d.p > 0)
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rpartition(".")[0])
        vector = p.ndim == 1 or 1 in p.shape
        if p.requires_grad and vector and not name.endswith("bias") and not isinstance(owner, torch.nn.LayerNorm) \
                and LAYER_INDEX.search("." + name):
            inputs += p.numel()  # a learned scale (IA3, DoRA's magnitude, an RMSNorm) keeps the tensor it scales
    if pools_last_token(base) and any(p.requires_grad for n, p in model.named_parameters() if in_head(n)):
        inputs += hidden  # a decoder's `score` head reads every position before one is picked
    names = [(n, type(m).__name__) for n, m in model.named_modules()]
    if any(n.endswith(("gate_proj", "w1")) for n, _ in names):
        act_kept = 3  # act(gate) * up: the gate, the activation and the up projection
    elif any(c == "NewGELUActivation" for _, c in names):
        act_kept = 4  # GPT-2's tanh GELU, written out in Python: four intermediates
    else:
        act_kept = 1
    peft_cfg = getattr(model, "peft_config", {}).get("default") if hasattr(model, "peft_config") else None
    virtual = int(getattr(peft_cfg, "num_virtual_tokens", 0) or 0)
    kind = str(getattr(peft_cfg, "peft_type", ""))
    prefix = virtual if "PREFIX" in kind else 0
    prompt = virtual if virtual and not prefix else 0
    embeddings_keep = body_wide and any(p.requires_grad for n, p in model.named_parameters() if "embeddings" in n) \
        or bool(prompt)
    return Shape(layers, hidden, inter, n_heads, attn_drop, hid_drop, trainable, total, matrix, trainable_matrix,
                 keep, embeddings_keep, inputs, leaf_modules(model), prefix, prompt, act_kept)
