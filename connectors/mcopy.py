"""Mutate a file in the private copy /tmp/mcopy, run pytest there, restore."""
import os, subprocess, sys
path, old, new, test = sys.argv[1:5]
extra = sys.argv[5:]
full = os.path.join("/tmp/mcopy", path)
original = open(full).read()
assert original.count(old) >= 1, f"pattern not found: {old!r}"
try:
    open(full, "w").write(original.replace(old, new, 1))
    env = dict(os.environ, PYTHONPATH="/tmp/mcopy",
               SYNCD_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test")
    r = subprocess.run(["/tmp/venv/bin/python", "-m", "pytest", test, "-q", "-p", "no:cacheprovider", *extra],
                       capture_output=True, text=True, env=env, cwd="/tmp/mcopy", timeout=900)
    lines = [l for l in r.stdout.splitlines() if l.startswith(("FAILED", "ERROR"))]
    tail = (r.stdout.strip().splitlines() or [r.stderr[-300:]])[-1]
    print(f"--- {path}: {old[:50]!r} -> {new[:40]!r}: {tail}")
    for l in lines[:8]: print("   ", l[:150])
finally:
    open(full, "w").write(original)
