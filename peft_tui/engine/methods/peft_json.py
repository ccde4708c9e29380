"""The escape hatch: any peft method we do not list, from its config as JSON.

    --method peft-json --set 'config={"peft_type": "LOHA", "r": 4, "target_modules": ["query", "value"]}'

The JSON object holds the keyword arguments of the peft config class named by "peft_type" (LORA,
LOHA, LOKR, VERA, BOFT, OFT, FOURIERFT, ...), built with `peft.get_peft_config`. The task type is
always SEQ_CLS (a different "task_type" is refused), and where the config class has
`modules_to_save` and the JSON leaves it out, the classifier head is added so it trains and is saved
with the adapter. The JSON is parsed when the run is configured (no peft import); the peft type and
the arguments are checked when the model is wrapped, each with a one-line error.

Default learning rate 1e-3 (right for the LoRA family; pass --lr for others, e.g. 1e-2 for prompt
learning methods).
"""

from __future__ import annotations

import json
from typing import Any

from peft_tui.engine.methods import Method, Param, register
from peft_tui.engine.methods.space import standard
from peft_tui.errors import ConfigError, first_line

EXAMPLE = '{"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"]}'


def parse_config(raw: Any) -> dict:
    """The JSON text as a dict with a string "peft_type"; ConfigError otherwise."""
    if isinstance(raw, dict):
        obj = dict(raw)
    else:
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(f"peft-json needs config=<JSON object with \"peft_type\">, e.g. config='{EXAMPLE}'")
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
                              f"write a JSON object such as {EXAMPLE}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"config must be a JSON object, not {type(obj).__name__}: e.g. {EXAMPLE}")
    if not isinstance(obj.get("peft_type"), str) or not obj["peft_type"]:
        raise ConfigError(f"config has no \"peft_type\" (e.g. \"LORA\", \"IA3\", \"LOHA\"): e.g. {EXAMPLE}")
    task = obj.get("task_type")
    if task is not None and str(task).upper() != "SEQ_CLS":
        raise ConfigError(f"config has task_type={task!r}: peft-tui trains classifiers, leave it out or use SEQ_CLS")
    return obj


def _check(raw: Any) -> str | None:
    try:
        parse_config(raw)
    except ConfigError as e:
        return "is not usable: " + str(e)
    return None


@register
class PeftJson(Method):
    name = "peft-json"
    summary = "any peft method from its config as JSON (needs config=...)"
    default_lr = 1e-3
    params = {
        "config": Param("config", str, "", f"a peft config as a JSON object with \"peft_type\", e.g. {EXAMPLE}",
                        _check),
    }
    space = standard(default_lr)

    def check_params(self, values):
        super().check_params(values)
        if "config" not in values:  # the default is empty: say what to pass at validation, not at training
            parse_config("")

    def check_model(self, model, params):
        from peft_tui.engine.methods.peft_common import check_targets

        targets = parse_config(self.resolve(params)["config"]).get("target_modules")
        if isinstance(targets, str) or isinstance(targets, list) and all(isinstance(t, str) for t in targets):
            check_targets(model, targets, f"peft-json ({self.resolve(params)['config'][:40]})")

    def peft_config(self, model, params):
        import dataclasses

        from peft import PeftType, get_peft_config

        from peft_tui.engine.weights import head_module_names

        obj = parse_config(self.resolve(params)["config"])
        known = {t.value for t in PeftType}
        peft_type = obj["peft_type"].upper()
        if peft_type not in known:
            raise ConfigError(f"unknown peft_type {obj['peft_type']!r}: use one of {', '.join(sorted(known))}")
        obj["peft_type"] = peft_type
        obj["task_type"] = "SEQ_CLS"
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(PeftType(peft_type))
        if cls is None:
            raise ConfigError(f"peft_type {peft_type!r} has no config class in this peft version")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - fields)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(unknown)}: check the names in peft's docs")
        from peft import PromptLearningConfig

        # prompt learning: peft adds the head to modules_to_save for SEQ_CLS itself
        if "modules_to_save" in fields and not obj.get("modules_to_save") and not issubclass(cls, PromptLearningConfig):
            obj["modules_to_save"] = head_module_names(model)
        try:
            return get_peft_config(obj)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{cls.__name__} refused this config: {first_line(e, 200)}") from None

    def apply(self, model, params):
        from peft_tui.engine.methods.peft_common import wrap

        return wrap(model, self.peft_config(model, params), f"peft-json ({self.resolve(params)['config'][:40]})")

    def save(self, model, folder, params):
        from peft_tui.engine.methods.peft_common import save_adapter

        save_adapter(model, folder)

    def load(self, base, folder, params):
        from peft_tui.engine.methods.peft_common import load_adapter

        return load_adapter(base, folder)
