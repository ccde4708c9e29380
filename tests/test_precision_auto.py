"""`--precision auto` by measurement: the calibration times bf16 against fp32 and checks their losses;
`auto` takes bf16 only where it is faster and its losses stay close; plan, doctor and runs follow it."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from conftest import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_tui.engine import estimate as E
from peft_tui.engine import precision as P
from peft_tui.engine.estimate import calibrate


@pytest.fixture()
def machine_cache(tmp_path, monkeypatch):
    """A fresh per-machine cache folder (PEFT_TUI_CACHE_DIR): nothing measured on this 'machine' yet."""
    folder = tmp_path / "machine-cache"
    monkeypatch.setenv(calibrate.MACHINE_CACHE_ENV, str(folder))
    return folder


def fake_measure(monkeypatch, figures: dict, calls: list, seconds: float = 0.0):
    """precision.measure replaced: records each call, sleeps `seconds`, returns `figures`."""
    import time

    def measure(device, timed=None, clock=None):
        calls.append(device)
        time.sleep(seconds)
        return dict(figures)

    monkeypatch.setattr(P, "measure", measure)


class Collect(list):
    def __call__(self, event):
        self.append(event)

    def close(self):
        pass


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


def test_auto_follows_the_measured_choice(tmp_path, machine_cache):
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


def test_doctor_says_what_auto_picks_and_why(tmp_path, machine_cache):
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


def _auto_run(store, sink=None):
    from peft_tui.config import DataConfig
    from peft_tui.engine.events import fan_out
    from peft_tui.engine.trainer import execute

    cfg = tiny_config(precision="auto", head_init="random", data=DataConfig(size=40))
    collect = Collect()
    result = execute(store, store.create_run(cfg), cfg, fan_out(store, collect))
    assert result is not None
    return result, [e.text for e in collect if type(e).__name__ == "LogMessage"]


@pytest.mark.parametrize("figures, expected", [({"fp32_s": 0.2, "bf16_s": 0.1, "loss_gap": 0.0}, "bf16"),
                                               ({"fp32_s": 0.1, "bf16_s": 0.2, "loss_gap": 0.0}, "fp32"),
                                               ({"fp32_s": 0.2, "bf16_s": 0.05, "loss_gap": 0.3}, "fp32")])
def test_the_first_cpu_run_with_auto_measures_once_for_every_store_on_the_machine(tmp_path, machine_cache,
                                                                                    monkeypatch, figures, expected):
    """No `plan` ever ran: the first run measures bf16 against fp32 (issue 19, item 5), keeps the figures per
    machine, and every later run, in this store or a new one, reads them instead of measuring again."""
    from peft_tui.commands.doctor import precision_check
    from peft_tui.engine.store import Store

    calls: list = []
    fake_measure(monkeypatch, figures, calls)
    first, logs = _auto_run(Store(tmp_path / "a"))
    assert calls == ["cpu"] and first.precision == expected
    [line] = [t for t in logs if t.startswith("precision auto")]
    assert line.startswith(f"precision auto -> {expected}: ") and "measured once for this machine" in line
    kept = json.loads((machine_cache / "precision.json").read_text())
    assert kept == {E.machine_key("cpu"): {"precision": figures}}
    for root in ("a", "b"):  # the same store again, and a new one
        again, logs = _auto_run(Store(tmp_path / root))
        assert again.precision == expected and not [t for t in logs if t.startswith("precision auto")]
    assert calls == ["cpu"]
    assert precision_check(str(tmp_path / "b"))["detail"].startswith(f"auto -> {expected} on cpu, measured: ")


def test_a_store_calibrated_by_plan_is_not_measured_again(store, machine_cache, monkeypatch):
    calls: list = []
    fake_measure(monkeypatch, {"fp32_s": 0.1, "bf16_s": 0.2, "loss_gap": 0.0}, calls)
    write_calibration(store.root, {"fp32_s": 0.2, "bf16_s": 0.1, "loss_gap": 0.0})
    result, _ = _auto_run(store)
    assert calls == [] and result.precision == "bf16" and not machine_cache.exists()


def test_a_machine_cache_that_cannot_be_written_leaves_the_rule_and_says_how_to_fix_it(store, tmp_path, monkeypatch):
    from peft_tui.engine.device import resolve_precision

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(calibrate.MACHINE_CACHE_ENV, str(blocker))
    calls: list = []
    fake_measure(monkeypatch, {"fp32_s": 0.2, "bf16_s": 0.1, "loss_gap": 0.0}, calls)
    result, logs = _auto_run(store)
    assert result.precision == resolve_precision("auto", "cpu") and calls == []
    [line] = [t for t in logs if t.startswith("precision auto")]
    assert "not measured" in line and calibrate.MACHINE_CACHE_ENV in line and "\n" not in line


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")), JSON.map(json.dumps),
                      JSON.map(lambda v: json.dumps({E.machine_key("cpu"): v})),  # this machine's key, junk value
                      JSON.map(lambda v: json.dumps({E.machine_key("cpu"): {"precision": v}})),
                      st.tuples(st.floats(allow_nan=True) | st.booleans() | st.text(max_size=3),
                                st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf])).map(  # no step times
                          lambda t: json.dumps({E.machine_key("cpu"): {"precision": {"fp32_s": t[0], "bf16_s": t[1]}}}))))
def test_a_damaged_machine_file_is_measured_again_and_rewritten(machine_cache, monkeypatch, junk):
    """Whatever the file holds (any bytes, any JSON, this machine's key with a wrong value), no choice is
    read from it, and the next CPU run with auto measures and rewrites it."""
    path = calibrate.machine_precision_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junk)
    assert calibrate.machine_precision("cpu") is None
    assert E.measured_choice(machine_cache / "no-store.json", "cpu")[0] is None
    calls: list = []
    fake_measure(monkeypatch, {"fp32_s": 0.3, "bf16_s": 0.1, "loss_gap": 0.0}, calls)
    line = calibrate.measure_precision_once(machine_cache / "no-store.json", "cpu")
    assert calls == ["cpu"] and line is not None and line.startswith("precision auto -> bf16")
    assert calibrate.machine_precision("cpu") == {"fp32_s": 0.3, "bf16_s": 0.1, "loss_gap": 0.0}


def test_two_first_runs_at_once_measure_once(machine_cache, monkeypatch):
    """Two workers starting together on a new machine: one measures while the other waits on the lock,
    then reads what the first wrote."""
    import threading

    calls: list = []
    fake_measure(monkeypatch, {"fp32_s": 0.2, "bf16_s": 0.1, "loss_gap": 0.0}, calls, seconds=0.4)
    lines: list = []
    threads = [threading.Thread(target=lambda: lines.append(
        calibrate.measure_precision_once(machine_cache / "none.json", "cpu"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["cpu"] and len(lines) == 3 and sum(line is not None for line in lines) == 1


def test_plan_calibration_also_fills_the_machine_file(tmp_path, machine_cache, monkeypatch):
    monkeypatch.setattr(P, "measure", lambda device, timed=None, clock=None: {"fp32_s": 1.0, "bf16_s": 0.5,
                                                                             "loss_gap": 0.0})
    monkeypatch.setattr(calibrate, "_module_seconds", lambda dev, sync, clock=None: 1e-5)
    monkeypatch.setattr(calibrate, "_timed", lambda fn, sync, seconds, clock=None: 1e-3)
    monkeypatch.setattr(calibrate, "_overhead_mb", lambda device: (400.0, 0.0))
    E.calibration(tmp_path / "calibration.json", "cpu")
    assert calibrate.machine_precision("cpu") == {"fp32_s": 1.0, "bf16_s": 0.5, "loss_gap": 0.0}
    assert E.measured_choice(tmp_path / "other-store.json", "cpu")[0] == "bf16"


def test_a_measurement_that_fails_leaves_the_rule_and_the_run_goes_on(store, machine_cache, monkeypatch):
    """precision.measure raising (a broken bf16 kernel, say) is a log line, never the run's failure."""
    from peft_tui.engine.device import resolve_precision

    def broken(device, timed=None, clock=None):
        raise RuntimeError("bf16 kernel missing\nsecond line")

    monkeypatch.setattr(P, "measure", broken)
    result, logs = _auto_run(store)
    assert result.precision == resolve_precision("auto", "cpu")
    [line] = [t for t in logs if t.startswith("precision auto")]
    assert "could not be measured (RuntimeError: bf16 kernel missing)" in line and "second line" not in line
