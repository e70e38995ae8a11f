"""The package import graph of a pvdisplay source tree, in figures.

Usage: python3 tools/import_graph.py [SRC]   (SRC: the folder holding `pvdisplay`, default src)

Prints the top-level packages and modules, the package-to-package edges, the import
statements behind them, and the groups of packages that import each other in a cycle.
`lint-imports` enforces the layers; this counts what the graph looks like, for a tree of
any age (the layers contract does not exist in old ones).
"""

import ast
import sys
from collections import defaultdict
from pathlib import Path


def top_level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_imports(src: Path) -> dict[tuple[str, str], int]:
    edges: dict[tuple[str, str], int] = defaultdict(int)
    root = src / "pvdisplay"
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        source = top_level(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                target = top_level(name)
                if name.startswith("pvdisplay.") and target not in (source, "__version__"):
                    edges[(source, target)] += 1
    return edges


def cycles(edges: dict[tuple[str, str], int]) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
        graph[target]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for following in graph[node]:
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def main(src: Path) -> None:
    edges = package_imports(src)
    names = {name for edge in edges for name in edge}
    print(f"top-level packages and modules in the graph: {len(names)}")
    print(f"package edges: {len(edges)}, import statements across packages: {sum(edges.values())}")
    print(f"cycles: {cycles(edges) or 'none'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "src"))
