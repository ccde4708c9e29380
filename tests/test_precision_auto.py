"""`--precision auto` by measurement: the calibration times bf16 against fp32 and checks their losses;
`auto` takes bf16 only where it is faster and its losses stay close; plan, doctor and runs follow it."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from conftest import tiny_config
from hypothesis import given
from hypothesis import strategies as st

from peft_tui.engine import estimate as E
from peft_tui.engine import precision as P
from peft_tui.engine.estimate import calibrate


def write_calibration(root, figures: dict) -> None:
    """A calibration file at `root` for this machine's CPU with the given bf16/fp32 figures."""
    cal = replace(E.NOMINAL_CPU, key=E.machine_key("cpu"), precision=figures)
    root.mkdir(parents=True, exist_ok=True)
    (root / "calibration.json").write_text(json.dumps({cal.key: cal.to_dict()}))


def test_pick_takes_bf16_only_when_faster_and_close():
    assert P.pick({"fp32_s": 0.10, "bf16_s": 0.05, "loss_gap": 0.01})[0] == "bf16"
    choice, why = P.pick({"fp32_s": 0.10, "bf16_s": 0.12, "loss_gap": 0.0})
    assert choice == "fp32" and "not faster" in why and "0.83x" in why
    assert P.pick({"fp32_s": 0.10, "bf16_s": 0.095, "loss_gap": 0.0})[0] == "fp32"  # under MIN_SPEEDUP: a tie
    choice, why = P.pick({"fp32_s": 0.10, "bf16_s": 0.02, "loss_gap": 0.2})
    assert choice == "fp32" and "strayed 20.0%" in why
    assert P.pick({"fp32_s": 0.1, "bf16_s": 0.05, "loss_gap": math.inf})[0] == "fp32"
    assert P.pick({})[0] is None and P.pick(None)[0] is None


@given(fp32=st.floats(1e-4, 10), bf16=st.floats(1e-4, 10), gap=st.floats(0, 1))
def test_pick_never_takes_a_slower_or_straying_bf16(fp32, bf16, gap):
    choice, why = P.pick({"fp32_s": fp32, "bf16_s": bf16, "loss_gap": gap})
    assert choice in ("bf16", "fp32") and why
    if choice == "bf16":
        assert fp32 / bf16 >= P.MIN_SPEEDUP and gap <= P.LOSS_TOLERANCE


@pytest.fixture()
def small_shape(monkeypatch):
    monkeypatch.setattr(P, "SHAPE", dict(P.SHAPE, hidden_size=32, intermediate_size=64, num_attention_heads=2))
    monkeypatch.setattr(P, "BATCH", (4, 8))


def test_measure_times_both_and_guards_the_loss(small_shape):
    """Timings come from the (monkeypatched) timer; the loss guard runs the real steps of both precisions
    from the same weights: bf16 autocast follows fp32 closely on CPU."""
    seen = []

    def timed(fn, sync, clock):
        seen.append(fn())  # a real step: it returns its loss
        return {1: 0.2, 2: 0.1}[len(seen)]

    figures = P.measure("cpu", timed=timed, clock=lambda: 0.0)  # a stopped clock: no early stop
    assert figures["fp32_s"] == 0.2 and figures["bf16_s"] == 0.1 and len(seen) == 2
    assert 0 <= figures["loss_gap"] <= P.LOSS_TOLERANCE
    assert P.pick(figures)[0] == "bf16"


def test_a_much_slower_bf16_is_not_measured_to_the_end(small_shape, monkeypatch):
    """bf16 steps past SLOWER_STOP x fp32's end its measurement after 2 guard steps, with no timed ones."""
    calls = []
    inner = P._step_fn

    def counting(device, precision, seed=0):
        step = inner(device, precision, seed)
        return lambda: calls.append(precision) or step()

    monkeypatch.setattr(P, "_step_fn", counting)
    ticks = iter(range(0, 10**9, 100))  # each reading of the clock is 100 s after the last
    figures = P.measure("cpu", timed=lambda fn, sync, clock: 1.0, clock=lambda: float(next(ticks)))
    assert calls.count("fp32") == P.GUARD_STEPS and calls.count("bf16") == 2
    assert figures["bf16_s"] == 100.0 and P.pick(figures)[0] == "fp32"


def test_loss_gap_is_relative_to_the_first_fp32_loss():
    assert P.loss_gap([0.7, 0.6], [0.7, 0.67]) == pytest.approx(0.1)
    assert P.loss_gap([0.7], [float("nan")]) == math.inf


def test_calibration_records_the_measurement(monkeypatch):
    monkeypatch.setattr(P, "measure", lambda device, timed=None, clock=None: {"fp32_s": 1.0, "bf16_s": 0.5,
                                                                             "loss_gap": 0.0})
    monkeypatch.setattr(calibrate, "_module_seconds", lambda dev, sync, clock=None: 1e-5)
    monkeypatch.setattr(calibrate, "_timed", lambda fn, sync, seconds, clock=None: 1e-3)
    cal = E.measure("cpu", "k", overhead=False)
    assert cal.precision == {"fp32_s": 1.0, "bf16_s": 0.5, "loss_gap": 0.0}


def test_auto_follows_the_measured_choice(tmp_path):
    from peft_tui.config import DataConfig

    cfg = tiny_config(precision="auto", data=DataConfig(size=60))
    assert E.resolved_auto(cfg, tmp_path / "none.json").precision == "auto"  # not measured: the fallback rule
    write_calibration(tmp_path, {"fp32_s": 0.2, "bf16_s": 0.1, "loss_gap": 0.01})
    assert E.resolved_auto(cfg, tmp_path / "calibration.json").precision == "bf16"
    assert E.resolved_auto(replace(cfg, precision="fp32"), tmp_path / "calibration.json").precision == "fp32"
    write_calibration(tmp_path, {"fp32_s": 0.1, "bf16_s": 0.2, "loss_gap": 0.01})
    assert E.resolved_auto(cfg, tmp_path / "calibration.json").precision == "fp32"

    model_cfg, lengths = E.inputs_for(cfg)
    cal = E.read_calibration(tmp_path / "calibration.json", "cpu")
    est = E.estimate(cfg, model_cfg, lengths, "cpu", cal)
    assert est.precision == "fp32" and "not faster" in est.precision_reason
    est = E.estimate(cfg, model_cfg, lengths, "cpu", replace(cal, precision={"fp32_s": 0.3, "bf16_s": 0.1,
                                                                             "loss_gap": 0.0}))
    assert est.precision == "bf16" and "3.00x faster" in est.precision_reason


def test_doctor_says_what_auto_picks_and_why(tmp_path):
    from peft_tui.commands.doctor import precision_check

    c = precision_check(str(tmp_path))
    assert "not measured" in c["detail"] and c["status"] == "ok"
    write_calibration(tmp_path, {"fp32_s": 0.2, "bf16_s": 0.1, "loss_gap": 0.0})
    c = precision_check(str(tmp_path))
    assert c["detail"].startswith("auto -> bf16 on cpu, measured: bf16 is 2.00x faster")


def test_a_run_with_auto_trains_in_the_measured_precision(store):
    from peft_tui.config import DataConfig
    from peft_tui.engine.trainer import execute

    write_calibration(store.root, {"fp32_s": 0.2, "bf16_s": 0.1, "loss_gap": 0.0})
    cfg = tiny_config(precision="auto", head_init="random", data=DataConfig(size=40))
    result = execute(store, store.create_run(cfg), cfg, store)
    assert result is not None and result.precision == "bf16"
