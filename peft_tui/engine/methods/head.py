"""Head-only probe: the encoder is frozen, only the classification head trains."""

from __future__ import annotations

from peft_tui.engine.methods import Method, register


@register
class Head(Method):
    name = "head"
    summary = "frozen encoder, classifier head only (the linear-probe baseline)"
    default_lr = 2e-3
    params = {}

    def apply(self, model, params):
        from peft_tui.engine.weights import freeze_all_but, head_module_names

        freeze_all_but(model, head_module_names(model))
        return model

    def save(self, model, folder, params):
        from peft_tui.engine.weights import save_trainable

        save_trainable(model, folder / "head.safetensors")

    def load(self, base, folder, params):
        from peft_tui.engine.weights import load_into

        load_into(base, folder / "head.safetensors")
        return base
