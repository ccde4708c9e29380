"""The `peft-tui` commands, one module per group. `peft_tui.cli` registers them on the app.

    train.py      run, compare, sweep, resume
    runs.py       runs, show, methods
    data.py       data
    plan.py       plan (estimates before running)
    artifacts.py  predict, export
    report.py     report
    doctor.py     doctor
    launch.py     launch (the dashboard)

Shared by all of them: options.py (the options several commands take, written once, and the one
function that turns them into a RunConfig), common.py (exit codes, the error decorator, the store,
JSON documents) and queueing.py (submitting runs, the pool that trains them, progress, Ctrl-C). No command module imports `peft_tui.cli` or another command module.
Heavy imports (torch, transformers, peft, textual, plotext) stay inside command bodies so
`peft-tui --help` stays instant.
"""
