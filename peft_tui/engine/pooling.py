"""How a sequence of token vectors becomes the one vector the classifier reads.

    resolve(requested, folder, model) -> "cls" | "mean" | "max" | "last"   ("auto" made concrete)
    install(model, pooling)                                                 (in place; records it)
    pooling_of(model) -> the pooling a loaded model uses
    native(model)     -> the pooling its transformers class has on its own

Modes:
- cls:  the first token. BERT-style models pass it through their own pooler layer (dense + tanh), as
        transformers' BertForSequenceClassification does; other encoders read it directly.
- mean: the average of the positions the attention mask marks real (sentence-transformers' mean).
- max:  the element-wise maximum over those positions.
- last: the last position the mask marks real (what decoder classifiers such as Llama's read).

`auto` takes the mode a sentence-transformers folder declares (`modules.json` -> `1_Pooling/config.json`;
the embedded all-MiniLM-L6-v2 declares mean) and otherwise the architecture's own: `last` for decoder
classifiers (a `score` head), `cls` for encoders.

A mode other than the architecture's own keeps the transformers class (so peft, `save_pretrained` and
checkpoints work unchanged) and changes one thing:
- BERT-style bodies (a `pooler` submodule): the pooler is replaced by `MaskedPool`, so the model's
  dropout + fresh linear classifier read the pooled vector instead of tanh(dense([CLS])).
- other bodies (DistilBERT, RoBERTa, decoders): a forward hook writes the pooled vector into every
  position of the body's output, so whichever position the head reads (first or last) holds it.
Either way a forward pre-hook on the body captures the attention mask the body is called with. With
prompt tuning that mask already covers the prepended virtual tokens (they count as real positions);
with prefix tuning it is wider than the hidden states by the prefix length, and its last columns
(those of the text) are used.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft_tui.config import POOLINGS
from peft_tui.errors import ConfigError, first_line

CONFIG_KEY = "peft_tui_pooling"  # where the resolved pooling is recorded in the model's config (and config.json)

# sentence-transformers Pooling config flags -> our modes (mean_sqrt_len and weightedmean have no equivalent)
ST_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last",
}


def sentence_transformers_pooling(folder: Path) -> str | None:
    """The single pooling mode a sentence-transformers folder declares, or None (not such a folder, or
    a mode or combination of modes we do not have)."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return None
    try:
        modules = json.loads(modules_file.read_text())
        entry = next((m for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
        if entry is None:
            return None
        config = json.loads((folder / entry["path"] / "config.json").read_text())
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:
        raise ConfigError(
            f"the sentence-transformers pooling config in {folder} could not be read ({first_line(e)}): "
            "fix the folder, or pass --set pooling=cls|mean|max|last"
        ) from None
    modes = [mode for key, mode in ST_MODES.items() if config.get(key)]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in ST_MODES]
    return modes[0] if len(modes) == 1 and not others else None


def native(model) -> str:
    """The pooling the model's transformers class does by itself."""
    return "last" if hasattr(model, "score") else "cls"


def resolve(requested: str, folder: Path | None, model) -> str:
    """`auto` -> the folder's sentence-transformers mode, else the architecture's own; others as given."""
    if requested not in POOLINGS:
        raise ConfigError(f"unknown pooling {requested!r}: use one of {', '.join(POOLINGS)}")
    if requested != "auto":
        return requested
    return (sentence_transformers_pooling(folder) if folder is not None else None) or native(model)


def pooling_of(model) -> str:
    """The pooling installed on `model` (a classifier from `models.load_model`, peft-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, CONFIG_KEY, None) or native(base)


def pool(hidden, mask, mode: str):
    """[batch, positions, hidden] -> [batch, hidden]. `mask` (1 = real, None = all real) may be wider than
    `hidden` by a prefix (prefix tuning): its last columns are the ones that line up."""
    import torch

    if mode == "cls":
        return hidden[:, 0]
    width = hidden.shape[1]
    real = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask[:, -width:].to(hidden.device)
    real = real > 0
    if mode == "last":
        positions = torch.arange(width, device=hidden.device)
        last = (positions * real).argmax(-1)  # the rightmost real position, under left or right padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "mean":
        weights = real.unsqueeze(-1).float()
        summed = (hidden.float() * weights).sum(1)  # float32 sums: bf16 loses digits over long texts
        return (summed / weights.sum(1).clamp(min=1.0)).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(~real.unsqueeze(-1), torch.finfo(hidden.dtype).min).max(1).values
    raise ValueError(f"unknown pooling mode {mode!r}")


def _module_class():
    """MaskedPool, defined on first use so importing this module stays torch-free."""
    from torch import nn

    class MaskedPool(nn.Module):
        """Pools the hidden states with the attention mask its body was last called with."""

        def __init__(self, mode: str):
            super().__init__()
            self.mode = mode
            self.mask = None

        def capture_mask(self, module, args, kwargs):
            self.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

        def forward(self, hidden):
            return pool(hidden, self.mask, self.mode)

        def spread(self, module, args, output):
            """Forward hook: every position of the body's output becomes the pooled vector."""
            hidden = output.last_hidden_state
            output.last_hidden_state = self(hidden).unsqueeze(1).expand_as(hidden)
            return output

        def extra_repr(self) -> str:
            return f"mode={self.mode!r}"

    return MaskedPool


def install(model, mode: str):
    """Make `model` (a fresh ...ForSequenceClassification) classify from `mode` pooling; returns it."""
    from torch import nn

    if mode not in POOLINGS or mode == "auto":
        raise ValueError(f"install needs a concrete pooling mode, not {mode!r}")
    setattr(model.config, CONFIG_KEY, mode)
    if mode == native(model):
        return model
    body = getattr(model, model.base_model_prefix)
    pooler = _module_class()(mode)
    body.register_forward_pre_hook(pooler.capture_mask, with_kwargs=True)
    if isinstance(getattr(body, "pooler", None), nn.Module):
        body.pooler = pooler
    else:
        body.register_forward_hook(pooler.spread)
    return model
