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
then plays the part of [CLS]. Prefix tuning on transformers 5 needs the small fix in
`peft_common.SeqClsModel` (see there).
"""

from __future__ import annotations

from peft_tui.engine.methods import Method, Param, positive, register


class _PromptLearning(Method):
    def peft_config(self, model, params):
        raise NotImplementedError

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

    def peft_config(self, model, params):
        from peft import PrefixTuningConfig, TaskType

        p = self.resolve(params)
        kwargs = {}
        if p["projection"]:
            kwargs["encoder_hidden_size"] = p["projection_size"] or model.config.hidden_size
        return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=p["num_virtual_tokens"],
                                  prefix_projection=p["projection"], **kwargs)


@register
class Prompt(_PromptLearning):
    name = "prompt"
    summary = "prompt tuning: learned input embeddings prepended to the text, via peft"
    default_lr = 3e-2
    params = {
        "num_virtual_tokens": Param("num_virtual_tokens", int, 20, "number of prompt embeddings", positive),
    }

    def peft_config(self, model, params):
        from peft import PromptTuningConfig, TaskType

        p = self.resolve(params)
        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=p["num_virtual_tokens"])
