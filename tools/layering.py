#!/usr/bin/env python3
"""Checks the module layering of the Rust crates: no import circles between source files,
and no transport crate in the domain modules.

Reads every `crate::`, `super::` and `self::` path of each crate's `src/` (use statements,
grouped ones expanded, and paths written inline), resolves each to the file that defines
the module it names, and fails when the file graph has a cycle or a domain file names a
forbidden crate. Test modules (`#[cfg(test)] mod … { … }`) are left out: tests may look
anywhere. Run from the repository root: `python3 tools/layering.py`.
"""

import pathlib
import re
import sys

CRATES = {
    "edge/src": {
        # The domain: wire protocol, room index, signals, clock.
        "domain": ["protocol/", "member.rs", "contacts.rs", "rooms/", "signal.rs", "clock.rs"],
    },
    "coordinator/src": {
        "domain": ["registry/"],
    },
}
FORBIDDEN = ["tonic", "axum", "redis", "tokio_tungstenite", "hyper", "openraft"]


def strip_comments_and_strings(text):
    text = re.sub(r'r(#+)"(?:.|\n)*?"\1', '""', text)  # raw strings
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)  # strings
    text = re.sub(r"/\*(?:.|\n)*?\*/", "", text)  # block comments
    text = re.sub(r"//[^\n]*", "", text)  # line comments (doc comments too)
    return text


def strip_test_modules(text):
    out = []
    pos = 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    for m in pattern.finditer(text):
        if m.start() < pos:
            continue
        out.append(text[pos : m.start()])
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        pos = i
    out.append(text[pos:])
    return "".join(out)


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> [["a","b"], ["a","c","d"], ["a","c","e"]]."""
    tree = tree.strip()
    if not tree:
        return [[]]
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                prefix = [p for p in tree[:i].split("::") if p.strip()]
                inner = tree[i + 1 : tree.rindex("}")]
                parts, start, d = [], 0, 0
                for j, c in enumerate(inner):
                    d += {"{": 1, "}": -1}.get(c, 0)
                    if c == "," and d == 0:
                        parts.append(inner[start:j])
                        start = j + 1
                parts.append(inner[start:])
                result = []
                for part in parts:
                    if part.strip():
                        for tail in expand_use_tree(part):
                            result.append([p.strip() for p in prefix] + tail)
                return result
            depth += 1
    name = tree.split(" as ")[0].strip()
    return [[p.strip() for p in name.split("::") if p.strip()]]


def module_of(rel):
    parts = list(pathlib.PurePosixPath(rel).with_suffix("").parts)
    if parts in (["lib"], ["main"]):
        return []
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def resolve(path, here, modules):
    """Absolute module path of `path` (as written in the module `here`) -> defining file."""
    if not path:
        return None
    head, rest = path[0], path[1:]
    if head == "crate":
        base = []
    elif head == "super":
        base = here[:-1]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif head == "self":
        base = here
    else:
        return None
    full = base + [p for p in rest if p not in ("self", "*")]
    for n in range(len(full), -1, -1):
        key = tuple(full[:n])
        if key in modules:
            return modules[key]
    return None


def check(root, config):
    src = pathlib.Path(root)
    files = sorted(p for p in src.rglob("*.rs"))
    rels = [p.relative_to(src).as_posix() for p in files]
    modules = {tuple(module_of(r)): r for r in rels if r != "main.rs"}
    edges = {r: set() for r in rels}
    problems = []
    for path, rel in zip(files, rels):
        if rel == "main.rs":
            continue
        here = module_of(rel)
        text = strip_test_modules(strip_comments_and_strings(path.read_text()))
        refs = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            refs.extend(expand_use_tree(m.group(1)))
        inline = re.sub(r"\buse\s+[^;]+;", "", text)
        for m in re.finditer(r"\b(?:crate|super|self)(?:::\w+)+", inline):
            refs.append(m.group(0).split("::"))
        for ref in refs:
            target = resolve(ref, here, modules)
            if target and target != rel:
                edges[rel].add(target)
        domain = any(rel == d or (d.endswith("/") and rel.startswith(d)) for d in config["domain"])
        if domain:
            for crate in FORBIDDEN:
                if re.search(rf"\b{crate}::", text):
                    problems.append(f"{root}/{rel}: a domain module uses `{crate}`")
    # Tarjan's strongly connected components.
    index, low, on_stack, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(sorted(scc))

    sys.setrecursionlimit(10000)
    for v in rels:
        if v not in index:
            visit(v)
    for scc in sccs:
        ties = [f"{a} -> {b}" for a in scc for b in sorted(edges[a]) if b in scc]
        problems.append(f"{root}: import circle between " + ", ".join(scc) + "\n    " + "\n    ".join(ties))
    return problems, sum(len(e) for e in edges.values()), len(rels)


def main():
    failed = False
    for root, config in CRATES.items():
        problems, n_edges, n_files = check(root, config)
        if problems:
            failed = True
            print("\n".join(problems))
        else:
            print(f"{root}: {n_files} files, {n_edges} imports between them, no circles; domain clean")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
