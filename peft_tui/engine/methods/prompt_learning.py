"""Prefix tuning (Li & Liang 2021) and prompt tuning (Lester et al. 2021) through peft.

- `prefix`: `num_virtual_tokens` learned key/value vectors prepended in every attention layer
  (trainable: layers * 2 * hidden * num_virtual_tokens, or an MLP reparametrisation with
  `projection` on). Default learning rate 1e-2 (P-tuning v2 used 5e-3..1e-2).
- `prompt`: `num_virtual_tokens` learned input embeddings prepended to the sequence
  (trainable: hidden * num_virtual_tokens). Default learning rate 3e-2: the prompt is a handful of
  vectors and trains slowly; the paper used 0.3 with Adafactor, AdamW needs far less.

For both, peft adds the classifier head to `modules_to_save`, so the head trains and is saved with
the adapter. peft extends the attention mask over the virtual tokens itself; the trainer's
`model(input_ids=..., attention_mask=...)` works unchanged. The virtual tokens take positions, so
keep max_length + num_virtual_tokens within the model's position limit (512 for BERTs). With
prompt tuning on a BERT the pooler reads the first virtual token's output (peft's behaviour), which
then plays the part of [CLS]. On decoder classifiers (Llama, Qwen2, GPT-2) prompt tuning pools the
last real token, and prefix tuning on transformers 5 runs through the cache: both need the small fixes
in `peft_common.SeqClsModel` (see there). Prefix tuning needs a model whose attention takes a cache:
DistilBERT does not, and is refused with a pointer to prompt, lora or ia3.
"""

from __future__ import annotations

from peft_tui.engine.methods import Method, Param, positive, register
from peft_tui.engine.methods.space import Range, standard
from peft_tui.errors import ConfigError


def shape_kwargs(model) -> dict:
    """num_layers / token_dim / num_attention_heads where peft cannot read them from the config
    (DistilBERT names them n_layers / dim / n_heads); transformers' attribute maps resolve them."""
    d = model.config.to_dict()
    out = {}
    if not any(k in d for k in ("num_hidden_layers", "num_layers", "n_layer")) and not hasattr(
            model.config, "num_hidden_layers"):
        out["num_layers"] = model.config.n_layers
    if not any(k in d for k in ("hidden_size", "n_embd", "d_model")):
        out["token_dim"] = model.config.hidden_size
    if not any(k in d for k in ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")):
        out["num_attention_heads"] = model.config.num_attention_heads
    return out


class _PromptLearning(Method):
    def peft_config(self, model, params):
        raise NotImplementedError

    def positions_taken(self, params):
        return int(self.resolve(params)["num_virtual_tokens"])  # the text's positions start after them

    def apply(self, model, params):
        from peft_tui.engine.methods.peft_common import wrap

        return wrap(model, self.peft_config(model, params), self.name)

    def save(self, model, folder, params):
        from peft_tui.engine.methods.peft_common import save_adapter

        save_adapter(model, folder)

    def load(self, base, folder, params):
        from peft_tui.engine.methods.peft_common import load_adapter

        return load_adapter(base, folder)


@register
class Prefix(_PromptLearning):
    name = "prefix"
    summary = "prefix tuning: learned key/value vectors in every attention layer, via peft"
    default_lr = 1e-2
    params = {
        "num_virtual_tokens": Param("num_virtual_tokens", int, 20, "prefix length per layer", positive),
        "projection": Param("projection", bool, False, "reparametrise the prefix through a 2-layer MLP"),
        "projection_size": Param("projection_size", int, 0, "hidden size of that MLP (0: the model's hidden size)",
                                 lambda v: None if v >= 0 else "must be >= 0"),
    }
    space = standard(default_lr, num_virtual_tokens=Range(4, 40, log=True, integer=True))

    def peft_config(self, model, params):
        from peft import PrefixTuningConfig, TaskType

        from peft_tui.engine.methods.peft_common import supports_cache

        if not supports_cache(model):
            raise ConfigError(
                f"prefix tuning needs attention layers that take a key/value cache; a {model.config.model_type!r} "
                "model has none: use prompt, lora or ia3"
            )
        p = self.resolve(params)
        kwargs = shape_kwargs(model)
        if p["projection"]:
            kwargs["encoder_hidden_size"] = p["projection_size"] or model.config.hidden_size
        return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=p["num_virtual_tokens"],
                                  prefix_projection=p["projection"], **kwargs)


@register
class Prompt(_PromptLearning):
    name = "prompt"
    summary = "prompt tuning: learned input embeddings prepended to the text, via peft"
    default_lr = 1e-2  # IMDB with the LP-FT head: 3e-2 65.1%, 1e-2 70.0%, 3e-3 68.9% (README evidence)
    params = {
        "num_virtual_tokens": Param("num_virtual_tokens", int, 20, "number of prompt embeddings", positive),
    }
    space = standard(default_lr, num_virtual_tokens=Range(4, 40, log=True, integer=True))

    def peft_config(self, model, params):
        from peft import PromptTuningConfig, TaskType

        p = self.resolve(params)
        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=p["num_virtual_tokens"],
                                  **shape_kwargs(model))
