"""What the peft-backed methods (ia3, prefix, prompt, peft-json) share: wrapping a classifier in a
`PeftModelForSequenceClassification`, saving the adapter, and rebuilding it from a run folder.

Why a subclass of peft's class: peft 0.21 runs prefix tuning only when the model's `forward` names a
`past_key_values` argument. transformers 5 renamed it `cache` (the old name still works through a
deprecation shim, but no longer appears in the signature), so stock peft refuses every encoder model
("Model does not support past key values which are required for prefix tuning."). `SeqClsModel`
passes the prefix as `cache=` instead when the model has no `past_key_values` argument; everything
else is peft's own code. The saved adapter folder is a normal peft folder (`adapter_config.json` +
`adapter_model.safetensors`); for prefix tuning on such models, rebuild it with `load_adapter()`
below (stock `PeftModel.from_pretrained` loads it, but its forward hits the same check).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from pathlib import Path

ADAPTER_DIR = "adapter"


@lru_cache(maxsize=1)
def seq_cls_class():
    """The PeftModelForSequenceClassification subclass, built on first use (keeps imports lazy)."""
    from peft import PeftModelForSequenceClassification
    from peft.peft_model import _get_batch_size

    class SeqClsModel(PeftModelForSequenceClassification):
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


def wrap(model, config, what: str):
    """Wrap `model` with the peft `config` (task type SEQ_CLS). peft's ValueErrors become ConfigErrors."""
    from peft_tui.config import ConfigError

    try:
        return seq_cls_class()(model, config)
    except (ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{what} cannot wrap this model: {first[:200]}") from None


def save_adapter(model, folder: Path) -> None:
    model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)


def load_adapter(base, folder: Path):
    """Rebuild the trained model from a fresh `base` classifier and `folder / "adapter"` (inference mode)."""
    from peft import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    path = folder / ADAPTER_DIR
    peft_type = PeftConfig._get_peft_type(str(path))
    config = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].from_pretrained(str(path))
    config.inference_mode = True
    model = seq_cls_class()(base, config)
    model.load_adapter(str(path), "default", is_trainable=False)
    return model
