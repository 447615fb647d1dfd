#!/usr/bin/env python3
"""Prints each crate's module graph and fails when two modules import each other.

Reads every `src/**/*.rs` of the gateway, the resolver and common, and takes each `crate::a::b`
path (and `super::x` from a submodule) as an edge from the file's module to the module it names.
Modules are named by their file (`queue::dispatch`, `results`); a `use crate::x::Y` where `Y` is
an item, not a module, counts as an edge to `x`. Edges within one module, and edges from a module
to one of its own submodules (a folder's `mod.rs` re-exporting its children), are left out.

    scripts/module-graph.py            # check: exit 1 and name the circle when there is one
    scripts/module-graph.py --print    # also print each crate's edges, by folder and by file
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["common", "gateway", "resolver"]
PATH = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super)::\{([^}]*)\}", re.S)


def modules(src):
    """Module path of every file: `lib.rs` is the root, `a/mod.rs` is `a`, `a/b.rs` is `a::b`."""
    found = {}
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts in (["lib"], ["main"]):
            continue
        if parts[-1] == "mod":
            parts = parts[:-1]
        found["::".join(parts)] = path
    return found


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def target(known, base, tail):
    """The longest known module named by `base` + `tail`."""
    parts = base + [p for p in tail if p]
    while parts:
        name = "::".join(parts)
        if name in known:
            return name
        parts = parts[:-1]
    return None


def edges_of(crate):
    src = ROOT / crate / "src"
    known = modules(src)
    edges = set()
    for module, path in known.items():
        text = strip_comments(path.read_text())
        # Tests may reach anywhere; only the module's own code counts.
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        own = module.split("::")
        is_folder = path.name == "mod.rs"
        parent = own if is_folder else own[:-1]
        refs = [(m.group(1), m.group(2).split("::")[1:]) for m in PATH.finditer(text)]
        for m in GROUP.finditer(text):
            for item in m.group(2).split(","):
                item = item.strip().split(" ")[0]
                if item:
                    refs.append((m.group(1), item.split("::")))
        for kind, tail in refs:
            base = [] if kind == "crate" else parent[:-1] if not is_folder else own[:-1]
            if kind == "super" and not is_folder:
                base = own[:-1]
            to = target(known, base, tail)
            if to is None or to == module:
                continue
            if to.startswith(module + "::"):
                continue  # a folder using its own children
            edges.add((module, to))
    return known, edges


def top(name):
    return name.split("::")[0]


def find_cycle(nodes, edges):
    graph = {n: sorted({b for a, b in edges if a == n}) for n in nodes}
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, []):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(nodes):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def main():
    show = "--print" in sys.argv
    failed = False
    for crate in CRATES:
        known, edges = edges_of(crate)
        folders = {(top(a), top(b)) for a, b in edges if top(a) != top(b)}
        if show:
            print(f"# {crate}: {len(known)} modules")
            for a, b in sorted(folders):
                print(f"  {a} -> {b}")
        for level, nodes, graph in [
            ("module", set(known), edges),
            ("folder", {top(n) for n in known}, folders),
        ]:
            cycle = find_cycle(nodes, graph)
            if cycle:
                failed = True
                print(f"{crate}: {level} import circle: {' -> '.join(cycle)}", file=sys.stderr)
    if failed:
        sys.exit(1)
    print("module-graph: no import circle in " + ", ".join(CRATES))


if __name__ == "__main__":
    main()
