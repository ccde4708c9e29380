"""Head only: the encoder is frozen and only the classification head trains (the linear-probe baseline).

Runs through `run` below: `probe.run` encodes the data once and fits the head on the cached pooled
vectors (L-BFGS, weight decay chosen on the validation split) instead of the standard training loop.
`apply` / `save` / `load` are what the probe, predict and export use to build and rebuild the model.
"""

from __future__ import annotations

from peft_tui.engine.methods import Method, register


@register
class Head(Method):
    name = "head"
    summary = "frozen encoder, linear classifier fitted on cached pooled features (linear probe)"
    default_lr = 2e-3  # only used when the head is trained by the standard loop (benchmarks compare it)
    params = {}

    def run(self, config, run_id, sink, cancel, out_dir, data, cache_dir=None):
        from peft_tui.engine import probe

        return probe.run(config, run_id, sink, cancel, out_dir, data, method=self, cache_dir=cache_dir)

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
