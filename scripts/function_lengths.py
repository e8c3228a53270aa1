#!/usr/bin/env python3
"""Lists the longest Rust functions in src/ (body lines, brace-matched) and files over a line limit.

Usage: scripts/function_lengths.py [N] — prints the N longest functions (default 15).
Strings and comments are stripped before braces are counted, so a brace in a literal does not
end a body early."""
import re, sys, pathlib

def strip(line, state):
    out, i = [], 0
    while i < len(line):
        if state["block"]:
            j = line.find("*/", i)
            if j < 0:
                return "".join(out)
            state["block"] = False; i = j + 2; continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"] = True; i += 2; continue
        if c == '"':
            j = i + 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            i = j + 1; continue
        if c == "'" and re.match(r"'(\\.|[^\\'])'", line[i:]):
            i += len(re.match(r"'(\\.|[^\\'])'", line[i:]).group(0)); continue
        out.append(c); i += 1
    return "".join(out)

fn_re = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")
rows = []
files = sorted(pathlib.Path("src").rglob("*.rs"))
for path in files:
    lines = path.read_text().splitlines()
    state = {"block": False}
    clean = [strip(l, state) for l in lines]
    for i, l in enumerate(clean):
        m = fn_re.search(l)
        if not m:
            continue
        depth, started, j = 0, False, i
        while j < len(clean):
            seg = clean[j] if j != i else clean[j][m.start():]
            for ch in seg:
                if ch == ";" and not started and depth == 0:
                    j = len(clean); break
                if ch == "{":
                    depth += 1; started = True
                elif ch == "}":
                    depth -= 1
                    if started and depth == 0:
                        rows.append((j - i + 1, f"{path}:{i+1}", m.group(1)))
                        j = len(clean); break
            j += 1
n = int(sys.argv[1]) if len(sys.argv) > 1 else 15
for length, where, name in sorted(rows, reverse=True)[:n]:
    print(f"{length:5}  {name}  {where}")
print("files over 800 lines:")
for path in files:
    c = len(path.read_text().splitlines())
    if c > 800:
        print(f"{c:6}  {path}")
