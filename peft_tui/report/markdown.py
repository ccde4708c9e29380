"""The Markdown report of a store's finished runs (`peft-tui report`): per dataset, the comparison
table, accuracy vs trainable parameters as a plotext chart (text), the Pareto front, and the
recommendations, each naming its runs. `build_report` is pure: store rows in, text out (the caller hands
in how a run's estimate is graded, engine.estimate.grade_run: a report imports no engine)."""

from __future__ import annotations

import json
import time
from typing import Any

from peft_tui.report import recommend as rec
from peft_tui.report.charts import accuracy_vs_params
from peft_tui.report.pareto import pareto_front
from peft_tui.report.table import Grader, rows_from_runs, to_markdown


def _group_key(run: dict[str, Any]) -> str:
    data = dict((run.get("config") or {}).get("data") or {})
    return json.dumps(data, sort_keys=True) if data else str(run.get("data"))


def _group_title(runs: list[dict[str, Any]]) -> str:
    first = runs[0]
    data = (first.get("config") or {}).get("data") or {}
    title = (first.get("result") or {}).get("data") or first.get("data") or "?"
    extras = [f"limit={data['limit']}"] if data.get("limit") else []
    if data.get("text_pair_col"):
        extras.append(f"pairs: {data.get('text_col')} + {data['text_pair_col']}")
    return title + (f" ({', '.join(extras)})" if extras else "")


def group_runs(runs: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Finished runs grouped by their data configuration (results on different data do not compare)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("status") == "done" and r.get("result"):
            groups.setdefault(_group_key(r), []).append(r)
    return [(_group_title(g), g) for g in groups.values()]


def build_report(runs: list[dict[str, Any]], source: str = "", width: int = 90, grade: Grader | None = None) -> str:
    groups = group_runs(runs)
    n = sum(len(g) for _, g in groups)
    lines = ["# peft-tui report", "",
             (f"{n} finished run(s){' in ' + source if source else ''}, {len(groups)} dataset(s); "
              f"written {time.strftime('%Y-%m-%d %H:%M')}."), ""]
    if not groups:
        lines.append("No finished runs yet: `peft-tui run`, `compare` or `sweep` first.")
        return "\n".join(lines) + "\n"
    for title, group in groups:
        rows = rows_from_runs(group, grade)
        models = sorted({r.get("model") for r in group if r.get("model")})
        devices = sorted({(r.get("result") or {}).get("device", "") for r in group} - {""})
        lines += [f"## {title}", "", f"Models: {', '.join(models)}; devices: {', '.join(devices) or '-'}.", ""]
        lines += [to_markdown(rows), "### Accuracy vs trainable parameters", ""]
        chart = accuracy_vs_params(rows, title="", width=width, height=18, color=False)
        if chart:
            lines += ["```text", chart.rstrip("\n"), "```", ""]
        front = pareto_front(rows)
        if front:
            lines.append("Pareto front (no other run is as accurate with as few trainable parameters): "
                         + ", ".join(f"{r['name']} (run {r['id']})" for r in front) + ".")
            lines.append("")
        lines += ["### Recommendations", "", rec.to_markdown(rec.recommend(rows))]
    return "\n".join(lines)
