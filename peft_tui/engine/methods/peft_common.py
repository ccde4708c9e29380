"""What the peft-backed methods (ia3, prefix, prompt, peft-json) share: wrapping a classifier in a
`PeftModelForSequenceClassification`, saving the adapter, and rebuilding it from a run folder.

Why a subclass of peft's class: peft 0.21 runs prefix tuning only when the model's `forward` names a
`past_key_values` argument. transformers 5 renamed it `cache` (the old name still works through a
deprecation shim, but no longer appears in the signature), so stock peft refuses every encoder model
("Model does not support past key values which are required for prefix tuning."). `SeqClsModel`
passes the prefix as `cache=` instead when the model has no `past_key_values` argument; everything
else is peft's own code.

Second fix: with prompt tuning (and p-tuning) peft feeds `inputs_embeds` to the model, and a decoder
classifier (Llama, Qwen2, GPT-2: a `score` head reading the last token) cannot find the last real token
in embeddings, so it reads the last position, a pad token under the trainer's right padding. For such
models `SeqClsModel` runs the body itself and pools the last position the attention mask marks real
(left or right padding alike), then applies the model's own `score` head.

The saved adapter folder is a normal peft folder (`adapter_config.json` +
`adapter_model.safetensors`); for prefix tuning on such models, rebuild it with `load_adapter()`
below (stock `PeftModel.from_pretrained` loads it, but its forward hits the same check).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from pathlib import Path

from peft_tui.errors import ConfigError, first_line

ADAPTER_DIR = "adapter"


@lru_cache(maxsize=1)
def seq_cls_class():
    """The PeftModelForSequenceClassification subclass, built on first use (keeps imports lazy)."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModelForSequenceClassification, PeftType
    from peft.peft_model import _get_batch_size
    from transformers.modeling_outputs import SequenceClassifierOutput

    class SeqClsModel(PeftModelForSequenceClassification):
        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                    output_attentions=None, output_hidden_states=None, return_dict=None, task_ids=None, **kwargs):
            if (self.active_peft_config.peft_type in (PeftType.PROMPT_TUNING, PeftType.P_TUNING)
                    and pools_last_token(self.base_model) and input_ids is not None and attention_mask is not None):
                return self._last_token_prompt_forward(input_ids, attention_mask, labels, task_ids, kwargs)
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   labels=labels, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states, return_dict=return_dict,
                                   task_ids=task_ids, **kwargs)

        def _last_token_prompt_forward(self, input_ids, attention_mask, labels, task_ids, kwargs):
            base = self.base_model
            batch, width = input_ids.shape
            n = self.active_peft_config.num_virtual_tokens
            embeds = self.word_embeddings(input_ids)
            prompts = self.get_prompt(batch_size=batch, task_ids=task_ids).to(embeds.dtype)
            embeds = torch.cat((prompts, embeds), dim=1)
            mask = torch.cat((attention_mask.new_ones(batch, n), attention_mask), dim=1)
            kwargs.pop("token_type_ids", None)
            body = getattr(base, base.base_model_prefix)
            hidden = body(inputs_embeds=embeds, attention_mask=mask, use_cache=False, **kwargs).last_hidden_state
            positions = torch.arange(width, device=input_ids.device)
            last = n + (positions * (attention_mask > 0)).argmax(-1)  # the rightmost real token
            logits = base.score(hidden[torch.arange(batch, device=hidden.device), last])
            loss = None
            if labels is not None:
                loss = (F.mse_loss(logits.squeeze(-1), labels.float()) if base.num_labels == 1
                        else F.cross_entropy(logits, labels))
            return SequenceClassifierOutput(loss=loss, logits=logits)
        def _prefix_tuning_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                                   output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
            backbone = self.base_model.get_submodule(self.transformer_backbone_name)
            names = set(inspect.signature(self.base_model.forward).parameters)
            names |= set(inspect.signature(backbone.forward).parameters)
            if "past_key_values" in names or "cache" not in names:  # peft's own path (or its own error)
                return super()._prefix_tuning_forward(
                    input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels,
                    output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                    return_dict=return_dict, **kwargs,
                )
            optional = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states,
                        "return_dict": return_dict}
            kwargs.update({k: v for k, v in optional.items() if v is not None})
            cache = self.get_prompt(_get_batch_size(input_ids, inputs_embeds))
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   labels=labels, cache=cache, **kwargs)

    return SeqClsModel


def pools_last_token(model) -> bool:
    """A decoder-style classifier: a `score` head over the token its body's last real position gives."""
    prefix = getattr(model, "base_model_prefix", "")
    return hasattr(model, "score") and bool(prefix) and hasattr(model, prefix)


def supports_cache(model) -> bool:
    """Whether the model's body takes a key/value cache (needed by prefix tuning)."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, model) if prefix else model
    names = set(inspect.signature(body.forward).parameters)
    return bool(names & {"cache", "past_key_values"})


def wrap(model, config, what: str):
    """Wrap `model` with the peft `config` (task type SEQ_CLS). peft's ValueErrors become ConfigErrors."""
    try:
        return seq_cls_class()(model, config)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{what} cannot wrap this model: {first_line(e, 200)}") from None


def check_targets(model, targets: list[str] | str | None, what: str) -> None:
    """Each of `targets` must match a module of `model` the way peft matches them: a name matches a module
    whose path is that name or ends in "." + name; a single string is a regular expression matched against
    whole paths ("all-linear": every linear layer). ConfigError naming the first that matches nothing."""
    import re

    if not targets or targets == "all-linear" or targets == ["all-linear"]:
        return
    paths = [n for n, _ in model.named_modules() if n]
    if isinstance(targets, str):
        try:
            hit = any(re.fullmatch(targets, p) for p in paths)
        except re.error as e:
            raise ConfigError(f"{what}: target_modules {targets[:60]!r} is not a valid regular expression ({e})") from None
        missing = [] if hit else [targets]
    else:
        missing = [t for t in targets if not any(p == t or p.endswith("." + t) for p in paths)]
    if missing:
        leaves = sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(f"{what}: target_modules {missing[0][:60]!r} matches no module of this model: "
                          f"use names of its layers, e.g. {', '.join(leaves[:8])}")


def save_adapter(model, folder: Path) -> None:
    from peft_tui.engine.weights import save_pretrained

    save_pretrained(model, folder / ADAPTER_DIR)


def check_adapter_folder(folder: Path) -> None:
    """The run's adapter folder must hold adapter_model.safetensors and no pickle weights file (peft would
    fall back to adapter_model.bin, read with torch.load)."""
    from peft_tui.engine.weights import require_safetensors

    require_safetensors(folder / ADAPTER_DIR / "adapter_model.safetensors")


def load_adapter(base, folder: Path):
    """Rebuild the trained model from a fresh `base` classifier and `folder / "adapter"` (inference mode)."""
    from peft import PeftConfig

    check_adapter_folder(folder)
    path = folder / ADAPTER_DIR
    config = PeftConfig.from_pretrained(str(path))  # the subclass named by the folder's peft_type
    config.inference_mode = True
    model = seq_cls_class()(base, config)
    model.load_adapter(str(path), "default", is_trainable=False)
    return model
