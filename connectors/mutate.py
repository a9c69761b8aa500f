"""Apply one text mutation to a file, run a pytest command, restore the file."""
import subprocess, sys, shutil, os
path, old, new, test = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
extra = sys.argv[5:] 
os.chdir("/work/main")
original = open(path).read()
assert original.count(old) >= 1, f"pattern not found: {old!r}"
backup = f"/tmp/mut/{os.path.basename(path)}.bak"
shutil.copy(path, backup)
try:
    open(path, "w").write(original.replace(old, new, 1))
    env = dict(os.environ, SYNCD_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test")
    r = subprocess.run(["/tmp/venv/bin/python", "-m", "pytest", test, "-q", "-x" if "-x" in extra else "-q", "-p", "no:cacheprovider", *[e for e in extra if e != "-x"]],
                       capture_output=True, text=True, env=env, timeout=600)
    lines = [l for l in r.stdout.splitlines() if l.startswith("FAILED") or l.startswith("ERROR")]
    tail = (r.stdout.strip().splitlines() or [r.stderr[-300:]])[-1]
    print(f"--- {old[:50]!r} -> {new[:40]!r}: {tail}")
    for l in lines[:6]: print("   ", l[:150])
finally:
    shutil.copy(backup, path)
    assert open(path).read() == original
