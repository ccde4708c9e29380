"""The package's import graph, read from the source (every import, lazy ones inside functions included):
modules, arrows, arrows that run back up the layers, circles (strongly connected groups), and the largest
modules. Used for the house's before/after figures (README, issue 17).

    python benchmarks/import_graph.py [ROOT]      # ROOT: the folder holding peft_tui/ (default: this repo)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# lowest first: an arrow from a module to one of a higher layer runs back up
LAYERS = [
    ("peft_tui.errors", "peft_tui.limits", "peft_tui.safe"),
    ("peft_tui.config",),
    ("peft_tui.engine",),  # engine core (everything in engine but store, submit, tune, scheduler, launch)
    ("peft_tui.engine.store",),
    ("peft_tui.engine.launch",),
    ("peft_tui.engine.submit", "peft_tui.engine.scheduler", "peft_tui.engine.tune"),
    ("peft_tui.report", "peft_tui.console"),
    ("peft_tui.commands", "peft_tui.ui", "peft_tui.cli"),
]


def layer_of(module: str) -> int:
    best, best_len = 0, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((root / "peft_tui").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # an annotation is not an arrow the code follows
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                found.add(t)
    return found


def sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def is_package_init(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    mods = modules(root)
    graph = {m: imports(m, p, set(mods)) for m, p in mods.items()}
    # an arrow to a package's own __init__ from inside the package is the package's front door, not a circle
    graph = {m: {t for t in ts if not (is_package_init(t, mods) and m.startswith(t + "."))} for m, ts in graph.items()}
    arrows = sum(len(v) for v in graph.values())
    back = sorted((a, b) for a, ts in graph.items() for b in ts if layer_of(b) > layer_of(a))
    circles = sccs(graph)
    print(f"modules {len(mods)}, import arrows {arrows}, arrows back up the layers {len(back)}, circles {len(circles)}")
    for a, b in back:
        print(f"  back up: {a} -> {b}")
    for c in circles:
        print(f"  circle of {len(c)}: {', '.join(c)}")
    sizes = sorted(((sum(1 for _ in p.open()), m) for m, p in mods.items()), reverse=True)[:8]
    print("largest modules: " + ", ".join(f"{m.removeprefix('peft_tui.')} {n}" for n, m in sizes))


if __name__ == "__main__":
    main()
