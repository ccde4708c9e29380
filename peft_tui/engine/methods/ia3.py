"""(IA)^3 (Liu et al. 2022) through peft: learned vectors that rescale the attention keys and values
and the input of the feed-forward output projection (the intermediate activations). The classifier
head trains and is saved with the adapter (`modules_to_save`).

Trainable parameters on a BERT: per layer hidden (keys) + hidden (values) + intermediate (FFN), plus
the head. The vectors start at 1, so the wrapped model first computes what the base computes.

Default learning rate 3e-3: the scales are few and multiplicative; peft's IA3 examples use 3e-3..1e-2.
"""

from __future__ import annotations

from peft_tui.engine.methods import Method, Param, register
from peft_tui.engine.methods.space import standard
from peft_tui.errors import ConfigError, first_line

_BERT = (r".*\.(key|value)|.*\.layer\.\d+\.output\.dense", r".*\.layer\.\d+\.output\.dense")
_LLAMA = (["k_proj", "v_proj", "down_proj"], ["down_proj"])

# model_type -> (target_modules, feedforward_modules). A string is a regex peft matches in full against
# module paths: BERT's `attention.output.dense` and `layer.N.output.dense` share a suffix, and only the
# latter is the feed-forward output projection.
TARGETS = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "distilbert": (["k_lin", "v_lin", "lin2"], ["lin2"]),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
}


def default_targets(model_type: str):
    """(target_modules, feedforward_modules) for a model type; peft's own table is the fallback."""
    if model_type in TARGETS:
        return TARGETS[model_type]
    from peft.utils import constants

    peft_targets = constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
    peft_ff = constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING

    if model_type not in peft_targets:
        raise ConfigError(
            f"ia3 has no default target modules for a {model_type!r} model: pass target_modules=... and "
            "feedforward_modules=... (module name suffixes)"
        )
    return peft_targets[model_type], peft_ff.get(model_type, [])


@register
class IA3(Method):
    name = "ia3"
    summary = "(IA)^3: learned rescaling of keys, values and FFN activations, via peft"
    default_lr = 3e-3
    params = {
        "target_modules": Param(
            "target_modules", list, None, "modules whose activations are rescaled (comma list); default per architecture"
        ),
        "feedforward_modules": Param(
            "feedforward_modules", list, None,
            "which targets are feed-forward (input rescaled); default per architecture, none when targets are given",
        ),
    }
    space = standard(default_lr)

    def check_params(self, values):
        super().check_params(values)
        targets, ff = values.get("target_modules"), values.get("feedforward_modules") or []
        if ff and not targets:
            raise ConfigError("feedforward_modules needs target_modules too: pass both")
        missing = [f for f in ff if f not in (targets or [])]
        if missing:
            raise ConfigError(f"feedforward_modules {missing} must also be in target_modules")

    def check_model(self, model, params):
        from peft_tui.engine.methods.peft_common import check_targets

        check_targets(model, self.resolve(params)["target_modules"], self.name)

    def peft_config(self, model, params):
        from peft import IA3Config, TaskType

        from peft_tui.engine.weights import head_module_names

        p = self.resolve(params)
        if p["target_modules"]:
            targets, ff = p["target_modules"], p["feedforward_modules"] or []
        else:
            targets, ff = default_targets(model.config.model_type)
        try:
            return IA3Config(
                task_type=TaskType.SEQ_CLS,
                target_modules=targets,
                feedforward_modules=ff,
                modules_to_save=head_module_names(model),
            )
        except ValueError as e:  # peft's own checks, for params that skipped check_params
            raise ConfigError(f"ia3: {first_line(e)}") from None

    def apply(self, model, params):
        from peft_tui.engine.methods.peft_common import wrap

        return wrap(model, self.peft_config(model, params), "ia3")

    def save(self, model, folder, params):
        from peft_tui.engine.methods.peft_common import save_adapter

        save_adapter(model, folder)

    def load(self, base, folder, params):
        from peft_tui.engine.methods.peft_common import load_adapter

        return load_adapter(base, folder)
