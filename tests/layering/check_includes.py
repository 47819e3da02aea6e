#!/usr/bin/env python3
"""The one-way dependencies of docs/ARCHITECTURE.md, checked on every
#include "..." of the source folders. Exits 1 naming each forbidden include.

  base/       libc only (and base/)
  tokenizer/  base/
  chat/       base/
  grammar/    base/
  engram/     base/, tokenizer/
  engine/     base/, tokenizer/, engram/, grammar/; kernels/ from engine/backend/cuda/ only
  server/     base/, tokenizer/, chat/, grammar/, and of engine/ only its public engine/engine.h
  kernels/    nothing of ours
cli/, bench/ and tests/ may include anything. Usage: check_includes.py [ROOT]"""
import os
import re
import sys

ALLOWED = {
    "base": {"base"},
    "tokenizer": {"base", "tokenizer"},
    "chat": {"base", "chat"},
    "grammar": {"base", "grammar"},
    "engram": {"base", "tokenizer", "engram"},
    "engine": {"base", "tokenizer", "engram", "grammar", "engine"},
    "server": {"base", "tokenizer", "chat", "grammar", "server"},
    "kernels": {"kernels"},
}
SERVER_ENGINE_PUBLIC = {"engine/engine.h"}
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def violations(root):
    for folder in ALLOWED:
        for dirpath, _, names in os.walk(os.path.join(root, folder)):
            for name in sorted(names):
                if not name.endswith((".c", ".h", ".cu")):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                for target in INCLUDE.findall(text):
                    top = target.split("/", 1)[0]
                    if "/" not in target:
                        yield rel, target, "not folder-qualified (write \"folder/%s\")" % target
                    elif folder == "server" and top == "engine" and target in SERVER_ENGINE_PUBLIC:
                        continue
                    elif folder == "engine" and top == "kernels" and rel.startswith("engine/backend/cuda/"):
                        continue
                    elif top not in ALLOWED[folder]:
                        yield rel, target, "%s/ may not include %s/" % (folder, top)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    bad = list(violations(root))
    for rel, target, why in bad:
        print('%s: #include "%s": %s' % (rel, target, why))
    if bad:
        print("layering: %d forbidden include(s)" % len(bad))
        return 1
    print("layering: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
