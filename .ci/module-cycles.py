#!/usr/bin/env python3
"""Lists module-to-module references in a crate's src/ and reports cycles.

A module is a file (foo.rs or foo/mod.rs). An edge A -> B is recorded when A's file names
B's path via `crate::`, `super::`, `self::` (or `keyward::` in main.rs, the bin root that
reaches the lib by name), including grouped `use x::{a, b::c}` imports. Inline `mod tests`
blocks count as part of their file; self-edges are dropped. Prints the edges, then the
strongly connected components with more than one module (cycles), at file level and with
modules collapsed to their top-level ancestor.

Exits 1 when two top-level modules of the crate reach each other (.ci/run checks every crate
with it; ARCHITECTURE.md). File-level cycles are printed but allowed: they are a child
module using its parent's items (`super::`) or a test module using the crate root, which is
how Rust modules nest, not two concerns tangled together.

    python3 .ci/module-cycles.py crates/keyward-engine/src
"""
import os, re, sys

root = sys.argv[1]
mods = {}  # module path tuple -> file
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs'):
            continue
        rel = os.path.relpath(os.path.join(dp, f), root)[:-3].split(os.sep)
        if rel in (['lib'],):
            path = ()
        elif rel == ['main']:
            path = ('<main>',)
        elif rel[-1] == 'mod':
            path = tuple(rel[:-1])
        else:
            path = tuple(rel)
        mods[path] = os.path.join(dp, f)

def strip_comments(t):
    """Drops comments and the contents of string and char literals (a small lexer)."""
    out, i, n = [], 0, len(t)
    while i < n:
        c = t[i]
        if t.startswith('//', i):
            j = t.find('\n', i); i = n if j < 0 else j
        elif t.startswith('/*', i):
            j = t.find('*/', i + 2); i = n if j < 0 else j + 2
        elif re.match(r'b?r(#*)"', t[i:i+40]) and (i == 0 or not (t[i-1].isalnum() or t[i-1] == '_')):
            m = re.match(r'b?r(#*)"', t[i:]); end = '"' + m.group(1)
            j = t.find(end, i + m.end()); i = n if j < 0 else j + len(end); out.append('""')
        elif c == '"':
            j = i + 1
            while j < n and t[j] != '"':
                j += 2 if t[j] == '\\' else 1
            i = j + 1; out.append('""')
        elif c == "'":
            m = re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|[^\\'])'", t[i:])
            if m: out.append("' '"); i += m.end()
            else: out.append(c); i += 1
        else:
            out.append(c); i += 1
    return ''.join(out)

def expand(prefix, text, i):
    """Paths starting at text[i:], after `prefix::` (handles {a, b::{c}})."""
    out = []
    m = re.match(r'\s*([A-Za-z_][A-Za-z0-9_]*(?:\s*::\s*[A-Za-z_][A-Za-z0-9_]*)*)(\s*::\s*\{)?', text[i:])
    if text[i:].lstrip().startswith('{'):
        # group directly after prefix::
        j = text.index('{', i) + 1
        depth, k, start, parts = 1, j, j, []
        while depth:
            c = text[k]
            if c == '{': depth += 1
            elif c == '}': depth -= 1
            if (c == ',' and depth == 1) or depth == 0:
                parts.append(text[start:k]); start = k + 1
            k += 1
        for p in parts:
            p = p.strip()
            if not p: continue
            sub = re.match(r'([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)', p.replace(' ', ''))
            if sub:
                out.append(prefix + tuple(x for x in sub.group(1).split('::')))
                if '{' in p:
                    # nested group: a::{b, c}
                    head = p.split('{', 1)[0].rstrip(':').replace(' ', '')
                    for q in p.split('{', 1)[1].rstrip('}').split(','):
                        q = q.strip().replace(' ', '')
                        if q:
                            out.append(prefix + tuple(head.split('::')) + tuple(q.split('::')))
        return out
    if m:
        out.append(prefix + tuple(s.strip() for s in m.group(1).split('::')))
        if m.group(2):
            out += expand(prefix + tuple(s.strip() for s in m.group(1).split('::')), text, i + m.end() - 1)
    return out

def resolve(p):
    """Longest known module prefix of path p."""
    for n in range(len(p), -1, -1):
        if p[:n] in mods:
            return p[:n]
    return None

edges = set()
for path, f in mods.items():
    t = strip_comments(open(f).read())
    here = () if path == ('<main>',) else path
    for m in re.finditer(r'\b(crate|super|self|keyward)\s*::', t):
        kw = m.group(1)
        if kw == 'keyward' and path != ('<main>',):
            continue
        if kw in ('crate', 'keyward'):
            base = ()
        elif kw == 'self':
            base = here
        else:
            base = here[:-1]
            # super::super::
        for full in expand(base, t, m.end()):
            while 'super' in full:
                k = full.index('super'); full = full[:k-1] + full[k+1:]
            target = resolve(full)
            if target is not None and target != path and target != here:
                edges.add((path, target))

    # Bare paths to a child module (`config::parse` in gateway.rs, after `mod config;`).
    for child in [c for c in mods if len(c) == len(here) + 1 and c[:len(here)] == here]:
        if re.search(r'(?<![:\w])' + re.escape(child[-1]) + r'\s*::', t):
            edges.add((path, child))

name = lambda p: '::'.join(p) or 'crate'
print('module edges:')
for a, b in sorted(edges):
    print(f'  {name(a)} -> {name(b)}')

def sccs(nodes, es):
    adj = {n: [] for n in nodes}
    for a, b in es: adj[a].append(b)
    idx, low, st, on, out, c = {}, {}, [], set(), [], [0]
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in adj[v]:
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    sys.setrecursionlimit(10000)
    for n in nodes:
        if n not in idx: sc(n)
    return [c for c in out if len(c) > 1]

cyc = sccs(list(mods), edges)
print('cycles (file level):', [sorted(map(name, c)) for c in cyc] or 'none')
top = lambda p: p[:1]
tedges = {(top(a), top(b)) for a, b in edges if top(a) != top(b) and top(a) and top(b)}
tnodes = {top(p) for p in mods if p}
print('top-level edges:')
for a, b in sorted(tedges):
    print(f'  {name(a)} -> {name(b)}')
tcyc = sccs(list(tnodes), tedges)
print('cycles (top-level modules):', [sorted(map(name, c)) for c in tcyc] or 'none')
sys.exit(1 if tcyc else 0)
