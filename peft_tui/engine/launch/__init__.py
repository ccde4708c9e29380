"""How a run becomes a process. The training loop (`trainer.execute`) knows nothing of processes: these
modules wrap it.

    worker.py   one process per device: claims queued runs from the store, trains each in a process of its own
    local.py    a pool that starts and watches one worker per device of this machine
    client.py   `watch`: follow runs through the store and their events.jsonl, cancel them on Ctrl-C/SIGTERM
"""
