"""Several runs on one GPU (--runs-per-gpu), tested on the CPU with a faked GPU memory: the fit check at
the claim (store/queue.py), the pool's slots and worker starts (launch/local.py), the option's parsing,
and the CUDA width buckets (batching.py). No worker process is started here."""

from __future__ import annotations

import dataclasses
import re

import pytest
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as hyp

from peft_tui.engine import memory
from peft_tui.engine.memory import AUTO_RUNS_PER_GPU, MAX_RUNS_PER_GPU, parse_runs_per_gpu
from peft_tui.engine.store import Store
from peft_tui.errors import ConfigError

HOST = "host-a"
GB = 1024  # MB


@pytest.fixture()
def gpu(monkeypatch):
    """A fake GPU: `gpu["total_mb"]` of memory, of which `gpu["free_mb"]` is free (default: all of it)."""
    state = {"total_mb": 10 * GB, "free_mb": None, "reads": 0}

    def device_memory(device: str):
        if not device.startswith("cuda"):
            return None
        state["reads"] += 1
        total = state["total_mb"] * 2**20
        free = total if state["free_mb"] is None else state["free_mb"] * 2**20
        return free, total

    monkeypatch.setattr(memory, "device_memory", device_memory)
    return state


def queue_runs(store: Store, *peaks_mb: float | None, device: str = "auto") -> list[int]:
    """Queued runs estimated at `peaks_mb` (None: queued without an estimate), oldest first."""
    return [store.create_run(tiny_config(device=device, name=f"r{i}"),
                             estimate=None if mb is None else {"peak_mb": float(mb)}) for i, mb in enumerate(peaks_mb)]


def claim(store: Store, n: int, per_gpu="auto", device: str = "cuda:0"):
    return store.claim(f"{HOST}:{100 + n}:{device}", 100 + n, HOST, [device], per_gpu)


def running(store: Store, device: str = "cuda:0") -> list[int]:
    return [r["id"] for r in store.list(status="running") if r["device"] == device]


def test_a_10gb_gpu_takes_three_3gb_runs_and_the_fourth_waits_until_one_ends(store, gpu):
    ids = queue_runs(store, 3 * GB, 3 * GB, 3 * GB, 3 * GB)
    got = [claim(store, n) for n in range(4)]
    assert [c.run_id if c else None for c in got] == [*ids[:3], None]
    assert running(store) == ids[:3]
    assert store.claimable(["cuda:0"], "auto", HOST) == []  # the idle worker's read sees nothing to take
    assert store.get(ids[3])["status"] == "queued"  # it waits: not failed, not claimed
    store.fail_run(ids[1], "ended")  # one run ends...
    assert store.claimable(["cuda:0"], "auto", HOST) == [ids[3]]
    c = claim(store, 4)
    assert c is not None and c.run_id == ids[3] and c.device == "cuda:0"  # ...and the fourth starts
    assert sorted(running(store)) == [ids[0], ids[2], ids[3]]


def test_the_margin_decides_at_the_edge(store, gpu):
    """Three runs fill 10 GB less 5%; a fourth of 100 MB does not fit beside them."""
    room = 10 * GB * 0.95
    ids = queue_runs(store, room / 3, room / 3, room / 3 - 1, 100)
    assert [c.run_id for c in (claim(store, 0), claim(store, 1), claim(store, 2))] == ids[:3]
    assert claim(store, 3) is None


def test_runs_per_gpu_n_caps_even_when_more_fit(store, gpu):
    ids = queue_runs(store, 1 * GB, 1 * GB, 1 * GB)
    assert claim(store, 0, 2).run_id == ids[0] and claim(store, 1, 2).run_id == ids[1]
    assert claim(store, 2, 2) is None and store.claimable(["cuda:0"], 2, HOST) == []
    assert store.get(ids[2])["status"] == "queued"
    ids2 = queue_runs(store, *[1 * GB] * 9)
    for r in ids[:2]:
        store.fail_run(r, "ended")
    taken = [claim(store, n, "auto") for n in range(10)]
    # auto: as many as fit (9 GB of 9.5 GB), at most AUTO_RUNS_PER_GPU
    assert len([c for c in taken if c]) == AUTO_RUNS_PER_GPU == 8
    assert [c.run_id for c in taken if c] == [ids[2], *ids2[:7]]


def test_a_run_bigger_than_the_whole_gpu_is_claimed_and_failed_in_one_line(store, gpu):
    small, big, after = queue_runs(store, 3 * GB, 12 * GB, 2 * GB)
    assert claim(store, 0).run_id == small
    c = claim(store, 1)  # the big one is failed on the way; the next one is claimed in the same call
    assert c is not None and c.run_id == after
    row = store.get(big)
    assert row["status"] == "failed" and row["device"] == "cuda:0" and row["finished_at"]
    assert "\n" not in row["error"]
    assert re.search(r"needs about 12,288 MB .* more than cuda:0 has in all \(10,240 MB\): lower --batch-size",
                     row["error"]), row["error"]
    # on an empty GPU too: it never waits
    store.fail_run(small, "ended")
    store.fail_run(after, "ended")
    [big2] = queue_runs(store, 11 * GB)
    assert claim(store, 2) is None and store.get(big2)["status"] == "failed"


def test_first_in_first_out_a_large_run_is_not_overtaken(store, gpu):
    a, big, small = queue_runs(store, 4 * GB, 7 * GB, 1 * GB)
    assert claim(store, 0).run_id == a
    assert claim(store, 1) is None  # the 7 GB run waits, and the 1 GB one behind it waits too
    assert store.claimable(["cuda:0"], "auto", HOST) == []
    store.fail_run(a, "ended")
    assert store.claimable(["cuda:0"], "auto", HOST) == [big, small]  # both fit now (8 of 9.5 GB)
    assert [claim(store, 2).run_id, claim(store, 3).run_id] == [big, small]


def test_free_memory_held_elsewhere_makes_a_run_wait_but_an_empty_gpu_always_takes_one(store, gpu):
    gpu["free_mb"] = 2 * GB  # another program holds 8 GB of the card
    a, b = queue_runs(store, 3 * GB, 3 * GB)
    assert claim(store, 0).run_id == a  # none of ours on the GPU: claimed as before (never waits forever)
    assert claim(store, 1) is None  # beside a run of ours, it must also fit the free memory
    gpu["free_mb"] = 6 * GB
    assert claim(store, 2).run_id == b


def test_a_run_without_an_estimate_trains_alone(store, gpu):
    est, none, est2 = queue_runs(store, 1 * GB, None, 1 * GB)
    assert claim(store, 0).run_id == est
    assert claim(store, 1) is None  # the unestimated run does not go beside another
    store.fail_run(est, "ended")
    assert claim(store, 2).run_id == none
    assert claim(store, 3) is None  # and nothing goes beside it
    store.fail_run(none, "ended")
    assert claim(store, 4).run_id == est2


def test_unreadable_gpu_memory_auto_is_one_at_a_time_and_n_is_taken_at_its_word(store, monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: None)
    ids = queue_runs(store, 1 * GB, 1 * GB, 1 * GB)
    assert claim(store, 0, "auto").run_id == ids[0]
    assert claim(store, 1, "auto") is None
    assert claim(store, 2, 2).run_id == ids[1]
    assert claim(store, 3, 2) is None


def test_other_hosts_and_other_gpus_do_not_count(store, gpu):
    ids = queue_runs(store, 6 * GB, 6 * GB, 6 * GB)
    assert claim(store, 0).run_id == ids[0]
    assert claim(store, 1, device="cuda:1").run_id == ids[1]  # another GPU: its own memory
    other = store.claim("host-b:1:cuda:0", 1, "host-b", ["cuda:0"], "auto")  # another machine's cuda:0
    assert other is not None and other.run_id == ids[2]


def test_the_cpu_and_a_pool_without_the_option_claim_as_before(store, gpu):
    ids = queue_runs(store, 30 * GB, 30 * GB)
    assert claim(store, 0, "auto", device="cpu").run_id == ids[0]  # no fit check on the CPU
    assert claim(store, 1, "auto", device="cpu").run_id == ids[1]
    assert gpu["reads"] == 0  # the GPU memory was never read for a CPU worker
    ids = queue_runs(store, 30 * GB, 30 * GB)
    assert claim(store, 2, None).run_id == ids[0]  # runs_per_gpu None: as before, even on a GPU
    assert claim(store, 3, None).run_id == ids[1]
    assert gpu["reads"] == 0


def test_a_baseline_needs_no_gpu_memory(store, gpu):
    from peft_tui.engine.store.queue import estimated_mb

    a = queue_runs(store, 9 * GB)[0]
    base = store.create_run(dataclasses.replace(tiny_config(device="auto"), method="tfidf", name="b"))
    assert estimated_mb(store._query("SELECT config FROM runs WHERE id=?", (base,))[0]["config"], None) == 0.0
    assert claim(store, 0).run_id == a
    assert claim(store, 1).run_id == base


@settings(max_examples=60, deadline=None)
@given(need=hyp.one_of(hyp.none(), hyp.floats(0, 20 * GB)),
       others=hyp.lists(hyp.one_of(hyp.none(), hyp.floats(0, 6 * GB)), max_size=10),
       free=hyp.floats(0, 10 * GB), per_gpu=hyp.one_of(hyp.just("auto"), hyp.integers(1, 12)))
def test_fit_verdict_never_overfills_and_never_waits_on_an_empty_gpu(need, others, free, per_gpu):
    from peft_tui.engine.store.queue import PACK_MARGIN, fit_verdict

    total = 10.0 * GB
    verdict, why = fit_verdict(need, others, [free, total], per_gpu, "cuda:0")
    if need is not None and need > total:
        assert verdict == "fail" and "more than cuda:0 has in all" in why
    elif not others:
        assert verdict == "claim"
    elif verdict == "claim":
        assert len(others) < (AUTO_RUNS_PER_GPU if per_gpu == "auto" else per_gpu)
        assert need is not None and None not in others
        assert need + sum(others) <= total * (1 - PACK_MARGIN) and need <= free - total * PACK_MARGIN
    else:
        assert verdict == "wait" and why


# ---------------------------------------------------------------- the pool: slots, and workers started
class FakeProc:
    pid_next = 5000

    def __init__(self):
        FakeProc.pid_next += 1
        self.pid = FakeProc.pid_next
        self.returncode = None

    def poll(self):
        return None


def test_pool_slots_per_gpu(tmp_path):
    from peft_tui.engine.launch.local import LocalPool

    two = ["cuda:0", "cuda:1"]
    assert [s.device for s in LocalPool(tmp_path, two, runs_per_gpu=2).slots] == two * 2  # the GPUs in turn
    assert len(LocalPool(tmp_path, two, runs_per_gpu="auto").slots) == 2 * AUTO_RUNS_PER_GPU
    assert len(LocalPool(tmp_path, two).slots) == 2  # without the option: one per device, as before
    assert len(LocalPool(tmp_path, ["cpu"], runs_per_gpu=4).slots) == 1  # the CPU keeps one worker
    assert len(LocalPool(tmp_path, two, workers=3, runs_per_gpu=4).slots) == 3  # --workers decides the count
    with pytest.raises(ConfigError, match="--runs-per-gpu"):
        LocalPool(tmp_path, two, runs_per_gpu="0")


def test_pool_starts_only_as_many_gpu_workers_as_runs_that_fit_now(tmp_path, gpu, monkeypatch):
    from peft_tui.engine.launch import local

    monkeypatch.setattr(local.LocalPool, "_spawn", lambda self, device, prewarmed=False: FakeProc())
    monkeypatch.setattr(local.socket, "gethostname", lambda: HOST)
    st = Store(tmp_path / "s")
    ids = queue_runs(st, 3 * GB, 3 * GB, 3 * GB, 3 * GB, 3 * GB)
    pool = local.LocalPool(st.root, ["cuda:0"], runs_per_gpu="auto")
    pool.wake()
    live = [s for s in pool.slots if s.proc is not None]
    assert len(live) == 3  # three runs fit now: three workers, not eight
    for n, s in enumerate(live):  # they claim them
        c = st.claim(local.worker_id(HOST, s.proc.pid, "cuda:0"), s.proc.pid, HOST, ["cuda:0"], "auto")
        assert c is not None and c.run_id == ids[n]
    pool.wake()
    assert sum(1 for s in pool.slots if s.proc is not None) == 3  # nothing more fits: no new worker
    st.fail_run(ids[0], "ended")
    pool.wake()  # the worker whose run ended is idle and takes the next: still no new worker
    assert sum(1 for s in pool.slots if s.proc is not None) == 3


def test_prewarm_starts_no_more_workers_than_runs(tmp_path, monkeypatch):
    from peft_tui.engine.launch import local

    monkeypatch.setattr(local.LocalPool, "_spawn", lambda self, device, prewarmed=False: FakeProc())
    pool = local.LocalPool(tmp_path / "s", ["cuda:0", "cuda:1"], runs_per_gpu="auto").prewarm(runs=3)
    assert [s.device for s in pool.slots if s.proc is not None] == ["cuda:0", "cuda:1", "cuda:0"]


# ---------------------------------------------------------------- --runs-per-gpu's values
VALID = re.compile(r"auto|0*([1-9]|[1-5][0-9]|6[0-4])", re.IGNORECASE | re.ASCII)


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("AUTO", "auto"), ("1", 1), ("8", 8),
                                         ("64", MAX_RUNS_PER_GPU)])
def test_runs_per_gpu_good_values(text, value):
    assert parse_runs_per_gpu(text) == value


@settings(max_examples=150, deadline=None)
@given(hyp.one_of(hyp.sampled_from(["0", "-1", "abc", "1.5", "65", "", " ", "+2", "2e1", "0x4", "１", "auto8", " 2", "1\xa0"]),
                  hyp.text(max_size=12), hyp.integers().map(str), hyp.floats().map(str)))
def test_runs_per_gpu_bad_values_are_refused_in_one_line(text):
    if VALID.fullmatch(text):
        assert parse_runs_per_gpu(text) in ("auto", *range(1, MAX_RUNS_PER_GPU + 1))
        return
    with pytest.raises(ConfigError) as e:
        parse_runs_per_gpu(text)
    message = str(e.value)
    assert "\n" not in message and message.startswith("--runs-per-gpu ")
    assert "pass e.g. --runs-per-gpu 4, or --runs-per-gpu auto" in message


# ---------------------------------------------------------------- the option on the training commands
COMMANDS = (["run"], ["compare", "--methods", "lora"], ["sweep", "--grid", "r=1,2"], ["tune", "--methods", "lora"],
            ["resume", "1"], ["launch"])


@settings(max_examples=40, deadline=None)
@given(command=hyp.sampled_from(COMMANDS),
       text=hyp.one_of(hyp.sampled_from(["0", "-1", "abc", "1.5", "65", ""]), hyp.text(max_size=8)))
def test_bad_runs_per_gpu_is_refused_in_one_line_by_every_training_command(tmp_path_factory, command, text):
    from typer.testing import CliRunner

    from peft_tui.cli import app

    if VALID.fullmatch(text):
        return
    store = tmp_path_factory.mktemp("s")
    res = CliRunner().invoke(app, [*command, f"--runs-per-gpu={text}", "--store", str(store / "s")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: Invalid value for '--runs-per-gpu'") and "--runs-per-gpu auto" in lines[0]
    assert not (store / "s").exists()  # refused before anything was made


@pytest.mark.parametrize("command", [c for c in COMMANDS if c[0] not in ("tune", "resume", "launch")])
@pytest.mark.parametrize("text, value", [("2", 2), ("auto", "auto")])
def test_runs_per_gpu_reaches_the_commands_pool(tmp_path, monkeypatch, command, text, value):
    from typer.testing import CliRunner

    from peft_tui.cli import app
    from peft_tui.commands import train

    seen = []

    def command_pool(store, configs, workers, ray=None, detach=False, runs_per_gpu=None):
        seen.append(runs_per_gpu)
        raise ConfigError("stopped here by the test")

    monkeypatch.setattr(train, "command_pool", command_pool)
    res = CliRunner().invoke(app, [*command, "--model", "tiny", "--runs-per-gpu", text, "--store", str(tmp_path)])
    assert seen == [value] and "stopped here by the test" in res.output and res.exit_code == 2


def test_command_pool_packs_the_gpus_it_prewarms(tmp_path, monkeypatch):
    from peft_tui.commands.queueing import command_pool
    from peft_tui.engine.launch import local

    monkeypatch.setenv("PEFT_TUI_INPROCESS_POOL", "0")
    monkeypatch.setattr(local, "default_devices", lambda: ["cuda:0"])
    monkeypatch.setattr(local.LocalPool, "_spawn", lambda self, device, prewarmed=False: FakeProc())
    configs = [tiny_config(name=f"r{i}") for i in range(3)]
    with command_pool(str(tmp_path / "s"), configs, None, runs_per_gpu="auto") as launch:
        pool = launch.prewarmed
        assert pool is not None and pool.runs_per_gpu == "auto" and len(pool.slots) == AUTO_RUNS_PER_GPU
        assert sum(1 for s in pool.slots if s.proc is not None) == 3  # one per run, not eight
    with pytest.raises(ConfigError, match="drop it with --ray"):
        with command_pool(str(tmp_path / "s"), configs, None, ray="auto", runs_per_gpu=2):
            pass


def test_tune_runs_as_many_trials_at_once_as_the_gpus_take(monkeypatch):
    from peft_tui.commands import tune
    from peft_tui.engine.launch import local

    monkeypatch.setattr(local, "default_devices", lambda: ["cuda:0", "cuda:1"])
    assert tune._local_devices() == 2
    assert tune._local_devices(3) == 6
    assert tune._local_devices("auto") == 2 * AUTO_RUNS_PER_GPU


# ---------------------------------------------------------------- CUDA width buckets (batching.py)
def up8(n: int) -> int:
    return -(-n // 8) * 8


@settings(max_examples=300, deadline=None)
@given(longest=hyp.integers(1, 2048), data=hyp.data())
def test_cuda_width_holds_the_batch_stays_within_the_split_and_takes_few_values(longest, data):
    import math

    from peft_tui.engine.batching import cuda_width

    width = data.draw(hyp.integers(1, longest))
    w = cuda_width(width, longest)
    assert w >= width and w % 8 == 0  # holds the longest row, tensor-core friendly
    assert up8(width) <= w <= up8(longest)  # never narrower than before buckets, never wider than the split's widest
    assert w <= max(16, 1.5 * width + 8)  # at most about a third of a row is padding
    sizes = {cuda_width(n, longest) for n in range(1, longest + 1)}
    assert len(sizes) <= 2 * math.log2(max(longest, 2)) + 2  # few shapes for the GPU libraries


def test_cuda_width_sizes_for_max_length_128_and_the_measuring_switch(monkeypatch):
    from peft_tui.engine.batching import cuda_width

    assert sorted({cuda_width(n, 128) for n in range(1, 129)}) == [16, 24, 32, 48, 64, 96, 128]
    assert sorted({cuda_width(n, 100) for n in range(1, 101)}) == [16, 24, 32, 48, 64, 96, 104]
    monkeypatch.setenv("PEFT_TUI_CUDA_BUCKETS", "0")  # as before: the next multiple of 8
    assert [cuda_width(n, 128) for n in (1, 9, 33, 97)] == [8, 16, 40, 104]


def test_collate_buckets_on_cuda_and_stays_exact_on_the_cpu(monkeypatch):
    import random

    import torch

    from peft_tui.engine.batching import collate, length_grouped_batches

    rng = random.Random(0)
    ids = [[1] * rng.randint(2, 120) for _ in range(400)]
    labels = [0] * len(ids)
    batches = length_grouped_batches([len(s) for s in ids], 8, random.Random(1))
    cpu = [collate(ids, labels, b, 0, "cpu")[0].shape[1] for b in batches]
    assert cpu == [max(len(ids[i]) for i in b) for b in batches]  # exact widths on the CPU
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)  # no GPU here: the tensors stay put
    cuda = [collate(ids, labels, b, 0, "cuda:0") for b in batches]
    widths = [x.shape[1] for x, _, _ in cuda]
    assert set(widths) <= {16, 24, 32, 48, 64, 96, 120} and len(set(widths)) <= 7
    assert len(set(cpu)) == 50  # ...where exact widths gave 50 shapes
    for (x, m, _), b in zip(cuda, batches):  # the padding is masked out
        assert m.sum(1).tolist() == [len(ids[i]) for i in b] and int(x[m == 0].sum()) == 0


def test_tune_detach_hands_runs_per_gpu_to_its_background_tune(tmp_path, monkeypatch):
    from peft_tui.commands import tune

    argv = []

    class Popen:
        pid = 4242

        def __init__(self, args, **kw):
            argv.extend(args)

    monkeypatch.setattr(tune.subprocess, "Popen", Popen)
    tune.run_in_background(tmp_path, "s1", None, None, False, True, runs_per_gpu="auto")
    assert argv[argv.index("--runs-per-gpu") + 1] == "auto" and argv[argv.index("--resume") + 1] == "s1"


# ---------------------------------------------------------------- the dashboard's pool
@pytest.mark.parametrize("text, value", [("2", 2), ("auto", "auto"), (None, None)])
def test_the_dashboard_hands_runs_per_gpu_to_its_pool(tmp_path, monkeypatch, text, value):
    """launch --runs-per-gpu -> create_app -> the app's Scheduler -> engine/submit.make_pool."""
    from typer.testing import CliRunner

    from peft_tui.cli import app
    from peft_tui.engine import scheduler as scheduler_mod
    from peft_tui.ui import app as app_mod

    made = {}

    def run(self):  # the dashboard is not drawn: its scheduler is started as on the first queued run
        self.scheduler.shutdown(cancel_running=True, timeout=5.0)

    def make_pool(store, **kw):
        made.update(kw)
        from peft_tui.engine.launch.inprocess import InProcessPool

        return InProcessPool(store.root, kw.get("devices"))

    monkeypatch.setattr(app_mod.PeftLab, "run", run)
    monkeypatch.setattr(scheduler_mod, "make_pool", make_pool)
    args = ["launch", "--model", "tiny", "--store", str(tmp_path / "s")]
    res = CliRunner().invoke(app, args + (["--runs-per-gpu", text] if text else []))
    assert res.exit_code == 0, res.output
    assert made["runs_per_gpu"] == value


def test_the_dashboard_refuses_runs_per_gpu_with_ray_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from peft_tui.cli import app

    res = CliRunner().invoke(app, ["launch", "--ray", "auto", "--runs-per-gpu", "2", "--store", str(tmp_path / "s")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: --runs-per-gpu packs this machine's GPUs: drop it with --ray (Ray places each run itself)"]
