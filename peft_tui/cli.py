"""The `peft-tui` command: the typer app, assembled from the command modules in `peft_tui.commands`.

Nothing else lives here: each command is in its group's module, the options several commands share
in `commands/options.py`, exit codes and error handling in `commands/common.py`.
"""

from __future__ import annotations

import typer

from peft_tui.commands import artifacts, data, doctor, launch, plan, report, runs, train, tune
from peft_tui.commands.common import OneLineUsageErrors

app = typer.Typer(
    cls=OneLineUsageErrors,
    help="peft-tui: compare full fine-tuning, LoRA, adapters and more on a transformer classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: rich help formatting imports rich + markdown-it, ~0.4 s of a ~0.7 s --help here
    # (benchmarks/startup.py); command output still uses rich
    rich_markup_mode=None,
)

# training
app.command()(train.run)
app.command()(train.compare)
app.command()(train.sweep)
app.command()(train.resume)
app.command()(plan.plan)
app.command()(tune.tune)
# stored runs and methods
app.command("runs")(runs.list_runs)
app.command()(runs.show)
app.command()(runs.methods)
# data, trained models, reports, the environment, the dashboard
app.command("data")(data.show_data)
app.command()(artifacts.predict)
app.command()(artifacts.export)
app.command()(report.report)
app.command()(doctor.doctor)
app.command()(launch.launch)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
