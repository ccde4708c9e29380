"""Property-based tests: random configs to validation, random CSV contents to the loaders. Every outcome
is a valid config / split or a one-line ConfigError, never another exception."""

from __future__ import annotations

import csv
import io
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_tui.config import ConfigError, DataConfig, RunConfig
from peft_tui.engine.methods import method_names, with_overrides
from peft_tui.engine.methods import validate as validate_run

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

anything = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=3),
)
special = st.sampled_from([float("nan"), float("inf"), -float("inf")])
numbers = st.one_of(st.integers(-5, 5000), st.floats(-2, 2), special)
RUN_KEYS = ["epochs", "batch_size", "lr", "max_length", "warmup_ratio", "weight_decay", "grad_clip", "seed",
            "device", "precision", "eval_every", "patience", "name", "trust_remote_code", "model"]
PARAM_KEYS = ["r", "alpha", "dropout", "size", "reduction_factor", "variant", "num_virtual_tokens", "use_dora",
              "target_modules", "include_norms", "activation", "nope"]


def _one_line(e: ConfigError) -> None:
    assert str(e).strip() and "\n" not in str(e)


@SETTINGS
@given(
    method=st.one_of(st.sampled_from(method_names()), st.text(max_size=8)),
    run=st.dictionaries(st.sampled_from(RUN_KEYS), st.one_of(numbers, anything), max_size=6),
    params=st.dictionaries(st.sampled_from(PARAM_KEYS), st.one_of(numbers, anything), max_size=3),
    data=st.dictionaries(st.sampled_from(["size", "val_fraction", "test_fraction", "label_noise", "limit", "source"]),
                         st.one_of(numbers, anything), max_size=3),
)
def test_random_configs_validate_or_config_error(method, run, params, data):
    try:
        cfg = RunConfig.from_dict({"method": method, "params": params, "data": data, **run})
        validate_run(cfg)
    except ConfigError as e:
        _one_line(e)
        return
    # a config that validates holds sane values
    assert cfg.epochs >= 1 and cfg.batch_size >= 1 and 8 <= cfg.max_length
    assert cfg.lr is None or 0 < cfg.lr < 1
    assert cfg.name is None or ("/" not in cfg.name and not cfg.name.startswith("."))


@SETTINGS
@given(pairs=st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(RUN_KEYS + PARAM_KEYS + ["data.size", "data.limit", "x"]),
              st.one_of(st.text(max_size=6), st.integers(-3, 300).map(str), st.floats(-1, 2).map(str))),
    st.text(max_size=10),
), max_size=4), method=st.sampled_from(method_names()))
def test_random_set_overrides(pairs, method):
    try:
        validate_run(with_overrides(RunConfig(method=method), pairs))
    except ConfigError as e:
        _one_line(e)


cell = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=15),
    st.integers(-3, 3).map(str), st.sampled_from(["", "nan", "NaN", "1.5", "pos", "neg", "None", '"', "\\n"]),
)


@SETTINGS
@given(
    header=st.one_of(st.just(["text", "label"]), st.lists(st.sampled_from(["text", "label", "x", ""]), min_size=1,
                                                          max_size=3)),
    rows=st.lists(st.lists(cell, min_size=0, max_size=3), max_size=30),
    val_fraction=st.sampled_from([0.0, 0.15, 0.4]),
    limit=st.sampled_from([0, 3, 10]),
)
def test_random_csv_gives_splits_or_config_error(header, rows, val_fraction, limit):
    from peft_tui.engine.data import load_splits

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    _load_and_check(buf.getvalue().encode("utf-8"), DataConfig(source="", val_fraction=val_fraction, limit=limit),
                    load_splits)


@SETTINGS
@given(blob=st.binary(max_size=300))
def test_random_bytes_give_splits_or_config_error(blob):
    from peft_tui.engine.data import load_splits

    _load_and_check(blob, DataConfig(source=""), load_splits)


def _load_and_check(content: bytes, cfg: DataConfig, load_splits) -> None:
    import dataclasses

    fd, path = tempfile.mkstemp(suffix=".csv")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        try:
            splits = load_splits(dataclasses.replace(cfg, source=path), 0)
        except ConfigError as e:
            _one_line(e)
            return
    finally:
        os.unlink(path)
    assert splits.num_labels >= 2 and len(splits.train) > 0 and len(splits.val) > 0 and len(splits.test) > 0
    for s in (splits.train, splits.val, splits.test):
        assert len(s.texts) == len(s.labels)
        assert all(isinstance(t, str) for t in s.texts)
        assert all(0 <= y < splits.num_labels for y in s.labels)
