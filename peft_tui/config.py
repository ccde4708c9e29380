"""Run configuration: frozen dataclasses with validation that explains itself.

Importing this module is cheap (no torch): the CLI and the dashboard's form both use it to
check user input before anything heavy happens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from peft_tui.errors import ConfigError, first_line  # ConfigError: callers may import it from here too
from peft_tui.limits import MAX_CONFIG_BYTES, MAX_INT, MAX_SYNTHETIC_SIZE

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
POOLINGS = ("auto", "cls", "mean", "max", "last")  # how a sequence becomes one vector for the classifier
# the classifier before the first step: fitted as a linear probe (LP-FT), seeded, or auto (probe on short runs)
HEAD_INITS = ("probe", "random", "auto")
DEFAULT_STORE = "peft-runs"
MAX_TIME_S = 366 * 86400.0  # the longest --max-time: a year
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class DataConfig:
    """Where examples come from.

    source: "synthetic" (default, seeded), a path to a CSV / JSONL / Parquet file, a folder written by
    `datasets` `save_to_disk`, or `hf:name[:config][:split]` (the HF hub).
    """

    source: str = "synthetic"
    text_col: str = "text"
    label_col: str = "label"
    text_pair_col: str | None = None  # second sentence of a pair (paraphrase / NLI); None: single texts
    val_source: str | None = None  # a separate validation file; else stratified from train
    test_source: str | None = None  # a separate test file; else stratified from train
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    size: int = 2400  # synthetic only: total examples before the split
    label_noise: float = 0.0  # synthetic only: fraction of labels flipped
    limit: int = 0  # file sources: stratified sample of at most this many rows (0 = all)
    # file sources: the seed of that sample and of the split (None: the run's seed). A tuning study fixes it,
    # so its trials and its final runs over several seeds share one split: no row selected on is tested on
    split_seed: int | None = None

    def split_seed_for(self, run_seed: int) -> int | None:
        """The seed that picks this data's rows and split for a run seeded `run_seed` (None: fixed, synthetic)."""
        if self.source == "synthetic":
            return None
        return run_seed if self.split_seed is None else self.split_seed

    def validate(self) -> None:
        check_types(self)
        if not self.source:
            raise ConfigError("data source is empty: pass --data synthetic or a path to a CSV/JSONL/Parquet file")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 0.9:
                raise ConfigError(f"{name}={v} is out of range: use a fraction between 0 and 0.9")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError("val_fraction + test_fraction leaves almost no training data: keep their sum below 0.9")
        if self.size < 20:
            raise ConfigError(f"size={self.size} is too small: the synthetic set needs at least 20 examples")
        if not 0.0 <= self.label_noise < 0.5:
            raise ConfigError(f"label_noise={self.label_noise} is out of range: use a fraction in [0, 0.5)")
        if self.split_seed is not None and not 0 <= self.split_seed <= MAX_INT:
            raise ConfigError(f"split_seed={self.split_seed} is out of range: use a seed in 0..{MAX_INT} (64 bits)")
        if self.limit < 0:
            raise ConfigError(f"limit={self.limit} is negative: use 0 for all rows or a positive row count")

        if self.size > MAX_SYNTHETIC_SIZE:
            raise ConfigError(f"size={self.size} is too large: the synthetic set makes at most "
                              f"{MAX_SYNTHETIC_SIZE:,} examples (use a data file for more)")
        if self.text_col in (self.label_col, self.text_pair_col) or self.label_col == self.text_pair_col:
            raise ConfigError(f"text_col={self.text_col!r}, label_col={self.label_col!r} and text_pair_col="
                              f"{self.text_pair_col!r} must be different columns (a label read as text leaks "
                              "the answer): check --text-col / --label-col")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run. Two equal configs give the same metrics on CPU."""

    method: str = "lora"
    model: str = "minilm"
    data: DataConfig = field(default_factory=DataConfig)
    params: dict[str, Any] = field(default_factory=dict)  # method parameters, checked by the method
    name: str | None = None
    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None  # None: the method's default learning rate
    max_length: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    eval_every: int = 0  # evaluate every N optimizer steps as well as at each epoch end (0: epoch end only)
    patience: int = 0  # early stopping: evaluations without improvement before stopping (0: off)
    trust_remote_code: bool = False
    pooling: str = "auto"  # auto: the checkpoint's own (sentence-transformers config, else the architecture's)
    # probe: fit the classifier as a linear probe before the first step (LP-FT); random: seeded; auto: probe for
    # runs of at most 200 optimizer steps, random for longer ones (engine/probe.py resolve_head_init, README)
    head_init: str = "auto"
    nproc: int = 1  # data-parallel processes for this one run (torchrun / Ray Train); 1: a single process
    max_time: float = 0.0  # seconds of wall time after which the run stops (and is refused if estimated longer); 0: none

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ConfigError with a one-line message on the first bad field. The method and its parameters
        are the method registry's to check: `peft_tui.engine.methods.validate(config)` does both."""
        check_types(self)
        self.data.validate()
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs} must be at least 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be at least 1")
        if self.lr is not None and not (0 < self.lr < 1):
            raise ConfigError(f"lr={self.lr} is out of range: use a learning rate in (0, 1), e.g. 2e-4")
        if not 8 <= self.max_length <= 32768:
            raise ConfigError(f"max_length={self.max_length} is out of range: use 8..32768 tokens")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip={self.grad_clip} must be >= 0 (0 turns clipping off)")
        if not 0 <= self.seed <= MAX_INT:
            raise ConfigError(f"seed={self.seed} is out of range: use a seed in 0..{MAX_INT} (64 bits)")
        if self.eval_every < 0 or self.patience < 0:
            raise ConfigError("eval_every and patience must be >= 0 (0 turns them off)")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}: use one of {', '.join(POOLINGS)}")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"unknown head_init {self.head_init!r}: use one of {', '.join(HEAD_INITS)}")
        if not 1 <= self.nproc <= 64:
            raise ConfigError(f"nproc={self.nproc} is out of range: use 1..64 processes for one run")
        if not 0 <= self.max_time <= MAX_TIME_S:
            raise ConfigError(f"max_time={self.max_time} is out of range: use seconds in 0..{MAX_TIME_S:.0f} "
                              "(e.g. --max-time 2h; 0: no limit)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+|mps", self.device):
            raise ConfigError(f"unknown device {self.device!r}: use auto, cpu, cuda or cuda:N")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.name):
            raise ConfigError(
                f"run name {self.name!r} is not allowed: use up to 64 letters, digits, '.', '_' or '-'"
            )

    @property
    def display_name(self) -> str:
        return self.name or self.method

    # ------------------------------------------------------------- (de)serialising
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        raw_data = d.pop("data", None)
        raw_data = {} if raw_data is None else raw_data  # [], 0, "" are wrong types, not "no data settings"
        if not isinstance(raw_data, dict):
            raise ConfigError(f"config key 'data' must be a table of data settings, not {type(raw_data).__name__}")
        unknown_data = set(raw_data) - {f.name for f in fields(DataConfig)}
        if unknown_data:
            raise ConfigError(f"unknown data config keys: {_keys(unknown_data)}; the data keys are "
                              f"{', '.join(f.name for f in fields(DataConfig))}")
        data = DataConfig(**raw_data)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {_keys(unknown)}; the keys are {', '.join(sorted(known))}")
        config = cls(data=data, **d)
        check_types(data)
        check_types(config)
        return config

    @classmethod
    def from_stored(cls, d: dict[str, Any], trust_remote_code: bool = False, what: str = "this run") -> RunConfig:
        """A config read back from a store or an export (data other people hand around, never trusted):
        its `trust_remote_code` becomes the flag the user gave the command that loads it. A stored config
        that asks for the model's own code without that flag is refused in one line naming the flag."""
        config = cls.from_dict(d)
        if config.trust_remote_code and not trust_remote_code:
            raise ConfigError(f"{what} is stored with trust_remote_code (its model would run its own Python code), "
                              "and a stored config is not trusted: pass --trust-remote-code if you trust that model")
        return dataclasses.replace(config, trust_remote_code=trust_remote_code)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    # ------------------------------------------------------------- --set key=value
    def with_overrides(self, pairs: list[str], method_params: Mapping[str, Any] | None = None) -> RunConfig:
        """Apply `key=value` strings: run fields, `data.*` / data fields, or the method's parameters
        (`method_params`: name -> an object whose `parse(raw)` reads a value; see
        `peft_tui.engine.methods.with_overrides`)."""
        method_params = method_params or {}
        top: dict[str, Any] = {}
        data: dict[str, Any] = {}
        params = dict(self.params)
        run_fields = {f.name: f for f in fields(RunConfig) if f.name not in ("data", "params", "method")}
        data_fields = {f.name: f for f in fields(DataConfig)}
        for pair in pairs:
            if "=" not in pair:
                raise ConfigError(f"--set {pair!r} is not key=value: write e.g. --set epochs=3")
            key, raw = (s.strip() for s in pair.split("=", 1))
            if key.startswith("data."):  # explicit: never a method parameter (adapters also have `size`)
                key = key[5:]
                if key not in data_fields:
                    raise ConfigError(f"unknown data key {key!r}: use one of {', '.join(data_fields)}")
                data[key] = _parse_field(data_fields[key], key, raw)
            elif key in method_params:
                params[key] = method_params[key].parse(raw)
            elif key == "trust_remote_code":
                raise ConfigError("trust_remote_code cannot be set with --set: pass --trust-remote-code "
                                  "(only that flag allows a model's own code)")
            elif key == "max_time":
                top[key] = parse_duration(raw)
            elif key in run_fields:
                top[key] = _parse_field(run_fields[key], key, raw)
            elif key in data_fields:
                data[key] = _parse_field(data_fields[key], key, raw)
            else:
                allowed = sorted(set(run_fields) | set(method_params))
                raise ConfigError(
                    f"unknown key {key!r} for method {self.method!r}: use one of {', '.join(allowed)} "
                    f"(or data.<key>; `peft-tui methods` lists each method's parameters)"
                )
        return dataclasses.replace(self, data=dataclasses.replace(self.data, **data), params=params, **top)


def check_types(obj: Any) -> None:
    """Each field of a config dataclass holds a value of its declared type (values from a config file,
    the dashboard's form or code are not parsed by --set). Floats must be finite."""
    import math

    for f in fields(obj):
        v = getattr(obj, f.name)
        kind = str(f.type)
        if v is None and "None" in kind:
            continue
        base = kind.split(" ")[0].split("|")[0].split("[")[0]
        ok = {
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": isinstance(v, str),
            "bool": isinstance(v, bool),
            "dict": isinstance(v, dict),
            "DataConfig": isinstance(v, DataConfig),
        }.get(base, True)
        example = f", e.g. {f.name}={f.default!r}" if f.default not in (dataclasses.MISSING, None) else ""
        if not ok:
            article = "an" if base == "int" else "a"
            raise ConfigError(f"{f.name}={_short(v)} has the wrong type: it takes {article} {base}{example}")
        if base in ("int", "float") and isinstance(v, int) and abs(v) > MAX_INT:
            raise ConfigError(f"{f.name}={_short(v)} is too large: it must fit in 64 bits{example}")
        if base == "float" and isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{f.name}={v!r} is not a finite number: use a real value{example}")


def _keys(keys: set[Any]) -> str:
    """Keys from a file, shown as repr() (a newline or a control character in a key stays on one line), at
    most five."""
    shown = sorted(_short(str(k), 40) for k in keys)
    return ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")


def _short(value: Any, limit: int = 60) -> str:
    """repr() of a value for a message, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (JSON would keep the last of two silently)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ConfigError(f"key {_short(key, 40)} is set twice in one object: keep one")
        seen[key] = value
    return seen


def config_from_file(path_str: str, warn: Callable[[str], None] | None = None) -> RunConfig:
    """A RunConfig from a JSON or TOML file (missing keys take their defaults). Parsed as data only:
    json / tomllib, never code. `peft-tui show ID --json` prints a run's config in this shape.
    `trust_remote_code` in a file is ignored: only the --trust-remote-code flag switches code execution on,
    so a shared document cannot; `warn` is told when a file asked for it."""
    import stat
    import tomllib

    path = Path(path_str).expanduser()
    name = _short(str(path_str), 120)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"config file {name} does not exist: check the path") from None
    except OSError as e:  # a path too long, a link loop
        raise ConfigError(f"config path {name} cannot be used ({e.strerror or first_line(e)}): check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config file {name} is not a regular file (a folder, pipe or device): pass a .json or "
                          ".toml file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name} is {st.st_size} bytes: a config holds a few settings; "
                          "is it the right file?")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {name} cannot be read ({e.strerror or first_line(e)})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
        raise ConfigError(f"config file {name} is UTF-16 or binary, not UTF-8 text: re-save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")  # -sig: a byte-order mark is dropped
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text, object_pairs_hook=_unique)
    except UnicodeDecodeError:
        raise ConfigError(f"config file {name} is not UTF-8 text: re-save it as UTF-8") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {name} could not be parsed ({first_line(e)}): write JSON or TOML") from None
    except ConfigError as e:  # a key set twice
        raise ConfigError(f"config file {name}: {e}") from None
    except RecursionError:
        raise ConfigError(f"config file {name} is nested too deeply: a config is one table of settings") from None
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict):  # a `peft-tui show --json` document
        raw = raw["config"]
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {name} must hold one object/table of settings")
    if raw.pop("trust_remote_code", False) and warn:
        warn(f"config file {name} asks for trust_remote_code: ignored; pass --trust-remote-code to allow a "
             "model's own code")
    try:
        return RunConfig.from_dict(raw)
    except TypeError as e:
        raise ConfigError(f"config file {name} has a bad value ({first_line(e)})") from None


def parse_duration(value: str | float | None) -> float | None:
    """Seconds from "90", "90s", "15m", "2h", "1.5d" (None stays None); ConfigError on anything else."""
    import math

    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-z]*)\s*", str(value).lower())
    if m is None or m.group(2) not in DURATION_UNITS:
        raise ConfigError(f"--max-time {_short(str(value), 40)} is not a duration: write seconds or e.g. 90m, 2h, 1d")
    seconds = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds > MAX_TIME_S:
        raise ConfigError(f"--max-time {_short(str(value), 40)} is too long: at most {MAX_TIME_S / 86400:.0f} days")
    return seconds


def _parse_field(f: dataclasses.Field, key: str, raw: str) -> Any:
    kind = str(f.type)
    if raw.lower() in ("none", "null") and "None" in kind:
        return None
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        t = kind.split(" ")[0].split("|")[0]
        example = f"e.g. {key}={f.default!r}" if f.default is not None else f"a {t}, or {key}=none for the default"
        raise ConfigError(f"{key}={raw!r} is not a valid {t}: write {example}") from None
    return raw


def store_path(cli_value: str | None = None) -> Path:
    """The run store: --store, else $PEFT_TUI_STORE, else ./peft-runs."""
    return Path(cli_value or os.environ.get("PEFT_TUI_STORE") or DEFAULT_STORE)
