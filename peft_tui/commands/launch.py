"""`peft-tui launch`: the dashboard."""

from __future__ import annotations

from peft_tui.commands.common import handles_errors
from peft_tui.commands.options import DataOpt, ModelOpt, RayOpt, RunsPerGpuOpt, StoreOpt, TrustOpt, WorkersOpt
from peft_tui.errors import ConfigError


@handles_errors
def launch(model: ModelOpt = "minilm", data: DataOpt = "synthetic", store: StoreOpt = None,
           workers: WorkersOpt = None, ray: RayOpt = None, trust_remote_code: TrustOpt = False,
           runs_per_gpu: RunsPerGpuOpt = None) -> None:
    """Open the dashboard: queue runs, watch them train, compare and export the results.

    --workers N: worker processes for the runs queued here (default one per device); --ray auto|ADDRESS:
    a Ray cluster trains them instead; --runs-per-gpu auto|N: several runs on one GPU, as many as fit by
    their estimates (as on `run` and `compare`). Runs queued elsewhere on the same store show and can be controlled;
    retrying or resuming one whose stored config runs its model's own code needs --trust-remote-code."""
    from peft_tui.ui.app import create_app

    if ray and runs_per_gpu is not None:
        raise ConfigError("--runs-per-gpu packs this machine's GPUs: drop it with --ray (Ray places each run itself)")
    create_app(model=model, data=data, store=store, workers=workers, ray=ray, trust_remote_code=trust_remote_code,
               runs_per_gpu=runs_per_gpu).run()
