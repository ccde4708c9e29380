"""`peft-tui launch`: the dashboard."""

from __future__ import annotations

from peft_tui.commands.common import handles_errors
from peft_tui.commands.options import DataOpt, ModelOpt, RayOpt, StoreOpt, TrustOpt, WorkersOpt


@handles_errors
def launch(model: ModelOpt = "minilm", data: DataOpt = "synthetic", store: StoreOpt = None,
           workers: WorkersOpt = None, ray: RayOpt = None, trust_remote_code: TrustOpt = False) -> None:
    """Open the dashboard: queue runs, watch them train, compare and export the results.

    --workers N: worker processes for the runs queued here (default one per device); --ray auto|ADDRESS:
    a Ray cluster trains them instead. Runs queued elsewhere on the same store show and can be controlled;
    retrying or resuming one whose stored config runs its model's own code needs --trust-remote-code."""
    from peft_tui.ui.app import create_app

    create_app(model=model, data=data, store=store, workers=workers, ray=ray, trust_remote_code=trust_remote_code).run()
