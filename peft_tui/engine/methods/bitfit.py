"""BitFit (Ben Zaken et al. 2022): train only the bias terms of the body, plus the classification head.

Every parameter named `*.bias` outside the head trains (attention and feed-forward projections, and,
with `include_norms` on, the LayerNorm biases too, as in the paper); every weight matrix, embedding
and LayerNorm scale stays frozen. Trainable parameters: the sum of those biases + the head.
Nothing is added to the model, so the trained model is a plain transformers classifier.

Saved as `bitfit.safetensors` (the trainable tensors, keyed by their parameter names).
Default learning rate 1e-3: biases are few and start from pretrained values; the paper used
1e-4..1e-3 on BERT-base, and the head trains in the same optimizer group, so we take the top.
Decoder models without biases (Llama, Mistral) are refused: only the head would train.
"""

from __future__ import annotations

from peft_tui.engine.methods import Method, Param, register
from peft_tui.engine.methods.space import standard
from peft_tui.errors import ConfigError

NORM_HINTS = ("layernorm", "layer_norm", "ln_", "norm")


def _is_norm(module_path: str) -> bool:
    last = module_path.rsplit(".", 1)[-1].lower()
    return any(h in last for h in NORM_HINTS)


def bias_names(model, include_norms: bool = True) -> list[str]:
    """Names of the body's bias parameters (head excluded)."""
    from peft_tui.engine.weights import head_module_names

    heads = tuple(h + "." for h in head_module_names(model))
    out = []
    for name, _ in model.named_parameters():
        if not name.endswith(".bias") or name.startswith(heads):
            continue
        if not include_norms and _is_norm(name[: -len(".bias")]):
            continue
        out.append(name)
    return out


@register
class BitFit(Method):
    name = "bitfit"
    summary = "bias terms + classifier head only (BitFit); no new modules"
    default_lr = 1e-3
    params = {
        "include_norms": Param("include_norms", bool, True, "also train LayerNorm biases (as in the paper)"),
    }
    space = standard(default_lr)

    def apply(self, model, params):
        from peft_tui.engine.weights import freeze_all_but, head_module_names

        p = self.resolve(params)
        names = bias_names(model, p["include_norms"])
        if not names:
            raise ConfigError(
                f"bitfit found no bias terms in this {model.config.model_type!r} model: only the head would train; "
                "use head, lora or ia3 instead"
            )
        freeze_all_but(model, head_module_names(model))
        wanted = set(names)
        for name, param in model.named_parameters():
            if name in wanted:
                param.requires_grad = True
        return model

    def save(self, model, folder, params):
        from peft_tui.engine.weights import save_trainable

        folder.mkdir(parents=True, exist_ok=True)
        save_trainable(model, folder / "bitfit.safetensors", metadata={"format": "pt", "method": "bitfit"})

    def load(self, base, folder, params):
        from peft_tui.engine.weights import load_into

        model = self.apply(base, params)
        load_into(model, folder / "bitfit.safetensors")
        return model
