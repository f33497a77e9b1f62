#!/usr/bin/env python3
"""Checks the crate's module graph: no import circles, and the layering rules below.

Reads every `crate::`, `super::` and `self::` path under src/ (use lines and inline paths,
comments and strings stripped) and builds, for each module, the graph of its child modules:
an edge A -> B when code anywhere under child A names something under sibling B. A cycle in
any of these graphs (the crate root's children included) is reported with the files that make
each edge. Then the rules: top-level modules that only some may name, and external crates a
module must not name. Any finding exits 1. Usage: ops/check-modules.py [SRC_DIR]
"""
import os, re, sys, collections

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")

# Top-level modules that only the listed top-level modules may name.
ONLY_FROM = {
    # Development appliance and test fixtures: never reached from production code.
    "dev": {"cli"},
}
# External crates a top-level module must not name.
NO_CRATES = {
    # The control plane is a domain module: the admin API maps it to HTTP.
    "control": ["axum", "http", "hyper", "tonic"],
    # The device layer knows nothing of protocols.
    "keystore": ["axum", "http", "hyper", "tonic", "sled"],
    # The CA state stores records; it speaks no client protocol.
    "state": ["axum", "http", "hyper", "tonic"],
}

def module_path(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel

def strip(text):
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i); i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i): depth += 1; i += 2
                elif text.startswith("*/", i): depth -= 1; i += 2
                else: i += 1
        elif c == 'r' and re.match(r'r#*"', text[i:i+10]) and (i == 0 or not (text[i-1].isalnum() or text[i-1] == '_')):
            m = re.match(r'r(#*)"', text[i:]); end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0))); i = n if j < 0 else j + len(end); out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == '\\' else 1
            i += 1; out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i+4]) or (c == "'" and text.startswith("'\\", i)):
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\x..|\\.|[^\\'])'", text[i:])
            if m: i += len(m.group(0)); out.append("' '")
            else: out.append(c); i += 1
        else:
            out.append(c); i += 1
    return "".join(out)

def expand(tree):
    """Expands a use tree like `a::{b, c::{d, e}}` into paths."""
    tree = re.sub(r"\s+", "", tree)
    def parse(s, i, prefix):
        paths, cur = [], ""
        while i < len(s):
            ch = s[i]
            if ch == "{":
                inner, i = parse(s, i + 1, prefix + cur)
                paths += inner; cur = None
            elif ch == ",":
                if cur: paths.append(prefix + cur)
                cur = ""; i += 1
            elif ch == "}":
                if cur: paths.append(prefix + cur)
                return paths, i + 1
            else:
                if cur is None: cur = ""
                cur += ch; i += 1
        if cur: paths.append(prefix + cur)
        return paths, i
    return parse(tree, 0, "")[0]

def resolve(mod, path):
    parts = [p for p in re.split(r"::", path) if p]
    parts = [re.sub(r"\bas\b.*$", "", p) for p in parts]
    if not parts: return None
    if parts[0] == "crate": base, rest = [], parts[1:]
    elif parts[0] in ("super", "self"):
        base = list(mod)
        rest = parts
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super": base = base[:-1]
            rest = rest[1:]
    else: return None
    return base + [p for p in rest if p and p not in ("*",)]

def main():
    files = []
    for d, _, fs in os.walk(ROOT):
        for f in fs:
            if f.endswith(".rs"): files.append(os.path.join(d, f))
    modules = {tuple(module_path(f)) for f in files}
    # inline `mod x { ... }` blocks are not separate files; treat them as part of their file
    edges = collections.defaultdict(set)  # (parent, a, b) -> files
    bad = False
    for f in files:
        mod = module_path(f)
        text = strip(open(f, encoding="utf-8").read())
        for crate_name in NO_CRATES.get(mod[0] if mod else "", []):
            if re.search(r"(?<![\w:])" + crate_name + r"::", text):
                bad = True
                print(f"{os.path.relpath(f, ROOT)}: module {mod[0]} must not use the {crate_name} crate")
        refs = []
        for m in re.finditer(r"\buse\s+((?:crate|super|self)\b[^;]*);", text):
            refs += expand(m.group(1))
        for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::(?:super|self))*(?:::\w+)+)", text):
            refs.append(m.group(1))
        for r in refs:
            target = resolve(mod, r)
            if target is None: continue
            # longest prefix that is a module
            k = len(target)
            while k > 0 and tuple(target[:k]) not in modules: k -= 1
            target = target[:k]
            # common ancestor; edge between the two children of that ancestor
            c = 0
            while c < len(mod) and c < len(target) and mod[c] == target[c]: c += 1
            if c >= len(mod) or c >= len(target):
                continue  # a module naming its own ancestor or descendant
            parent = tuple(mod[:c])
            edges[(parent, mod[c], target[c])].add(os.path.relpath(f, ROOT))
            if c == 0 and target[0] in ONLY_FROM and mod[0] not in ONLY_FROM[target[0]]:
                bad = True
                print(f"{os.path.relpath(f, ROOT)}: module {mod[0]} must not use crate::{target[0]}"
                      f" (only {', '.join(sorted(ONLY_FROM[target[0]]))} may)")
    graphs = collections.defaultdict(lambda: collections.defaultdict(set))
    for (parent, a, b) in edges: graphs[parent][a].add(b)
    for parent, g in sorted(graphs.items()):
        # Tarjan's strongly connected components
        index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
        def visit(v):
            index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
            for w in sorted(g.get(v, ())):
                if w not in index: visit(w); low[v] = min(low[v], low[w])
                elif w in on: low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v: break
                if len(comp) > 1: comps.append(sorted(comp))
        for v in sorted(set(g) | {w for vs in g.values() for w in vs}):
            if v not in index: visit(v)
        for comp in comps:
            bad = True
            where = "::".join(("crate",) + parent)
            print(f"import cycle among {where}::{{{', '.join(comp)}}}:")
            for a in comp:
                for b in sorted(g[a]):
                    if b in comp:
                        print(f"  {a} -> {b}  ({', '.join(sorted(edges[(parent, a, b)]))})")
    if bad: sys.exit(1)
    print("module graph: no import cycles, layering rules hold")

main()
