"""Full fine-tuning: every parameter trains. Saved with `save_pretrained` (safetensors), so stock
`AutoModelForSequenceClassification.from_pretrained(run_folder / "model")` loads it."""

from __future__ import annotations

from peft_tui.engine.methods import Method, register
from peft_tui.engine.methods.space import standard


@register
class Full(Method):
    name = "full"
    summary = "every parameter trains (the reference; largest memory and checkpoint)"
    default_lr = 5e-5
    params = {}
    space = standard(default_lr)

    def apply(self, model, params):
        for p in model.parameters():
            p.requires_grad = True
        return model

    def save(self, model, folder, params):
        from peft_tui.engine.weights import save_pretrained

        save_pretrained(model, folder / "model")

    def load(self, base, folder, params):
        from peft_tui.engine.weights import load_into

        load_into(base, folder / "model" / "model.safetensors")
        return base
