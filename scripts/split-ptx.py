#!/usr/bin/env python3
"""Splits NVRTC PTX modules into one file per kernel, for comparing the compiled code of two versions.

Usage: split-ptx.py OUT_DIR MODULE.ptx...  (each .entry becomes OUT_DIR/<entry>.<module>.ptx). The module header
(.version, .target, .address_size) and the file's comments are dropped; a kernel's text is its .entry block with the
module-scope declarations it names (shared arrays, constants), and its branch labels ($L__BB<function>_<block>) and
local stack (__local_depot<function>) lose the function's position in the module, so a kernel moved to another
module compares equal.
Then `diff -r BEFORE AFTER` lists the kernels whose code changed.
"""
import os
import re
import sys


def kernels(text):
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("//")]
    globals_, entries, i = {}, {}, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*\.(?:visible|weak)?\s*\.entry\s+(\w+)\(", line)
        if m:
            name, depth, body, j = m.group(1), 0, [], i
            while True:
                body.append(lines[j])
                depth += lines[j].count("{") - lines[j].count("}")
                if "{" in "".join(body) and depth == 0:
                    break
                j += 1
            entries[name] = body
            i = j + 1
            continue
        g = re.match(r"\s*\.(?:global|const|shared|extern)\b.*?\s([\w$]+)(\[|;| =)", line)
        if g:
            globals_[g.group(1)] = line.strip()
        i += 1
    for name, body in entries.items():
        text = "\n".join(body)
        used = sorted(d for g, d in globals_.items() if re.search(r"\b" + re.escape(g) + r"\b", text))
        text = re.sub(r"\$L__BB\d+_", "$L__BB_", "\n".join(used + body) + "\n")
        yield name, re.sub(r"__local_depot\d+", "__local_depot", text)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for path in sys.argv[2:]:
        module = os.path.basename(path).rsplit(".", 1)[0]
        for name, text in kernels(open(path).read()):
            with open(os.path.join(out, f"{name}.{module.rsplit('_', 1)[-1]}.ptx"), "w") as f:
                f.write(text)


main()
