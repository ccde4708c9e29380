"""LoRA through `peft` (task type SEQ_CLS). The classifier head trains and is saved with the adapter
(`modules_to_save`), so stock `PeftModel.from_pretrained(base, run_folder / "adapter")` reproduces the
run's logits.

Options: `use_dora` (DoRA, Liu et al. 2024: the update is split into a learned magnitude per output
feature and a LoRA-updated direction; adds one vector of out_features per adapted module) and
`use_rslora` (rank-stabilised LoRA, Kalajdzievski 2023: the update is scaled by alpha/sqrt(r) instead
of alpha/r, so higher ranks keep learning). `dora` is registered as its own method, LoRA with
use_dora on. Both share the default learning rate (default_lr below).
"""

from __future__ import annotations

from peft_tui.engine.methods import Method, Param, fraction, positive, register
from peft_tui.engine.methods.space import Choice, Range, standard
from peft_tui.errors import ConfigError, first_line

# Per-architecture targets (attention projections), peft's own table is the fallback.
TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta-v2": ["query_proj", "value_proj"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
}


def default_targets(model_type: str) -> list[str] | str:
    if model_type in TARGETS:
        return TARGETS[model_type]
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_table

    return list(peft_table.get(model_type, [])) or "all-linear"


def _targets(names: list[str] | None) -> list[str] | str | None:
    """`target_modules=all-linear` arrives as a one-name list: peft wants the string."""
    return "all-linear" if names == ["all-linear"] else names


@register
class Lora(Method):
    name = "lora"
    summary = "low-rank updates on attention projections, via peft"
    default_lr = 2e-3
    params = {
        "r": Param("r", int, 8, "rank of the update matrices", positive),
        "alpha": Param("alpha", float, 16.0, "scaling numerator (update scaled by alpha/r)", positive),
        "dropout": Param("dropout", float, 0.05, "dropout on the LoRA input", fraction),
        "target_modules": Param(
            "target_modules", list, None, "module names to adapt (comma list); default per architecture"
        ),
        "use_dora": Param("use_dora", bool, False, "DoRA: learned magnitude + LoRA-updated direction"),
        "use_rslora": Param("use_rslora", bool, False, "rsLoRA: scale the update by alpha/sqrt(r), not alpha/r"),
    }
    # rank, alpha as a multiple of the rank, and the targets: the architecture's attention projections or
    # every linear layer
    space = standard(default_lr, r=Range(2, 32, log=True, integer=True),
                     alpha_per_r=Range(0.5, 4.0, log=True, sets="alpha", times="r"),
                     target_modules=Choice(("attention", "all-linear"), values=(None, ["all-linear"])))

    def check_model(self, model, params):
        from peft_tui.engine.methods.peft_common import check_targets

        check_targets(model, self.resolve(params)["target_modules"], self.name)

    def peft_config(self, model, params):
        from peft import LoraConfig, TaskType

        from peft_tui.engine.weights import head_module_names

        p = self.resolve(params)
        return LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=p["r"],
            lora_alpha=p["alpha"],
            lora_dropout=p["dropout"],
            target_modules=_targets(p["target_modules"]) or default_targets(model.config.model_type),
            modules_to_save=head_module_names(model),
            use_dora=p["use_dora"],
            use_rslora=p["use_rslora"],
        )

    def apply(self, model, params):
        from peft import get_peft_model

        try:
            return get_peft_model(model, self.peft_config(model, params))
        except ValueError as e:  # peft: "Target modules {...} not found in the base model"
            raise ConfigError(f"{self.name} cannot wrap this model: {first_line(e)}") from None

    def save(self, model, folder, params):
        from peft_tui.engine.methods.peft_common import save_adapter

        save_adapter(model, folder)

    def load(self, base, folder, params):
        from peft import PeftModel

        from peft_tui.engine.methods.peft_common import ADAPTER_DIR, check_adapter_folder

        check_adapter_folder(folder)
        return PeftModel.from_pretrained(base, folder / ADAPTER_DIR)


@register
class Dora(Lora):
    name = "dora"
    summary = "DoRA: LoRA with a learned magnitude per output feature, via peft"
    params = {**Lora.params, "use_dora": Param("use_dora", bool, True, "DoRA (on: this is the dora method)")}
