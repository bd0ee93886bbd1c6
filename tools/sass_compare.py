"""Compares two SASS snapshots (tools/sass_snapshot.sh): every kernel of BEFORE must appear in AFTER with
the same body, matched by body so that kernels may gain template arguments (new names) and new kernels
may appear. --params also ignores the kernel-parameter offsets (c[0x0][...]) and the encodings, for a
change that only grew the parameter struct.

    python3 tools/sass_compare.py BEFORE_DIR AFTER_DIR [--params]
"""
from __future__ import annotations

import collections
import re
import sys
from pathlib import Path


def kernels(path: Path, ignore_params: bool) -> dict[str, str]:
    """mangled name -> body of each function in one cuobjdump -sass listing."""
    bodies: dict[str, list[str]] = {}
    name = None
    for line in path.read_text().splitlines():
        header = re.match(r"Function : (\S+)", line)
        if header:
            name = header.group(1)
            bodies[name] = []
        elif name is not None and not line.startswith((".section", "----")):
            if ignore_params:
                line = re.sub(r"c\[0x0\]\[0x[0-9a-f]+\]", "c[0x0][P]", line)
                line = " ".join(re.sub(r"/\* 0x[0-9a-f]+ \*/", "", line).split())
            bodies[name].append(line)
    return {n: "\n".join(b) for n, b in bodies.items()}


def main() -> int:
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    ignore_params = "--params" in sys.argv[3:]
    changed = 0
    for listing in sorted(before.glob("*.sass")):
        old, new = kernels(listing, ignore_params), kernels(after / listing.name, ignore_params)
        present = collections.Counter(new.values())
        missing = [n for n, body in old.items() if present[body] == 0]
        print(f"{listing.name}: {len(old)} kernels before, {len(new)} after, {len(missing)} changed")
        for n in missing:
            print(f"  changed: {n}")
        changed += len(missing)
    print("identical" if changed == 0 else f"{changed} kernels changed")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
