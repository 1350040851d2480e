"""Code-shape figures for issue 16, measured the same way before and after: the largest
functions (lines, branches), `hasattr`/`getattr(` in monitor/, `noqa` markers, import cycles
among monitor modules (module-level and function-level imports), and mypy's error count.

Usage: python scripts/code_figures.py [--mypy]   (JSON on stdout)
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "monitor"


def module_name(p: Path) -> str:
    rel = p.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def functions(tree: ast.AST, mod: str):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            branches = sum(
                isinstance(
                    n,
                    (
                        ast.If,
                        ast.For,
                        ast.While,
                        ast.Try,
                        ast.With,
                        ast.IfExp,
                        ast.BoolOp,
                        ast.ExceptHandler,
                        ast.comprehension,
                    ),
                )
                for n in ast.walk(node)
            )
            yield {"function": f"{mod}:{node.name}", "lines": node.end_lineno - node.lineno + 1, "branches": branches}


def imports(tree: ast.AST, mod: str, modules: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            for a in node.names:
                cand = f"{base}.{a.name}"
                out.add(cand if cand in modules else base)
        elif isinstance(node, ast.Import):
            for a in node.names:
                out.add(a.name)
    return {m for m in out if m in modules and m != mod}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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


def main() -> int:
    files = sorted(PKG.rglob("*.py"))
    modules = {module_name(p) for p in files}
    funcs, graph = [], {}
    probes = noqa = 0
    for p in files:
        text = p.read_text()
        tree = ast.parse(text)
        mod = module_name(p)
        funcs += list(functions(tree, mod))
        graph[mod] = imports(tree, mod, modules)
        probes += len(re.findall(r"\bhasattr\(|\bgetattr\(", text))
        noqa += text.count("# noqa")
    funcs.sort(key=lambda f: -f["lines"])
    rec = {
        "largest_functions": funcs[:8],
        "functions_over_60_lines": sum(f["lines"] > 60 for f in funcs),
        "hasattr_getattr": probes,
        "noqa": noqa,
        "import_cycles": cycles(graph),
    }
    if "--mypy" in sys.argv:
        r = subprocess.run(
            [sys.executable, "-m", "mypy", "monitor", "--ignore-missing-imports", "--no-error-summary"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        rec["mypy_errors_default"] = sum(1 for line in r.stdout.splitlines() if ": error:" in line)
    print(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
