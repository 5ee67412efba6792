#!/usr/bin/env python3
"""Herald's benchmarks, run with the neutral load generator and peers of ../shared/bench.

Copies ../shared/bench to .bench/ (builds and results stay out of shared/), builds Herald in
release mode, and runs compare.py with the herald peer beside the others, in the same run.
Adds the scenarios Herald's issues ask for to compare.py's own:

  LP10k  10,000 concurrent long polls held, then answered: memory per held long poll and
         answer latency (issue 2)

Usage: scripts/bench.py [--peers nchan,herald] [--scenarios LP10k,S5] [--reps 1] [compare.py options]
"""

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = pathlib.Path(os.environ.get("HERALD_BENCH_DIR", ROOT.parent / "shared" / "bench"))
WORK = ROOT / ".bench"

SCENARIOS = {
    "LP10k": dict(title="10,000 long polls held, then answered (5 messages at 1 msg/s)",
                  transport="lp", n=10000, m=5, args=["--rate", "1", "--settle", "3"], n_min=1000),
}


def main():
    if not (SOURCE / "compare.py").exists():
        sys.exit(f"no load generator at {SOURCE}; set HERALD_BENCH_DIR")
    shutil.copytree(SOURCE, WORK, dirs_exist_ok=True, ignore=shutil.ignore_patterns("run", "results", "fanout"))
    subprocess.run(["swift", "build", "-c", "release", "--product", "herald", "--scratch-path", ".build-release"],
                   cwd=ROOT, check=True)
    os.environ["HERALD_BIN"] = str(ROOT / ".build-release" / "release" / "herald")
    sys.path.insert(0, str(WORK))
    import compare  # noqa: E402  (the copied compare.py)

    compare.SCENARIOS.update(SCENARIOS)
    if not any(arg.startswith("--peers") for arg in sys.argv[1:]):
        sys.argv += ["--peers", "nchan,herald"]
    if not any(arg.startswith("--ref") for arg in sys.argv[1:]):
        sys.argv += ["--ref", "nchan"]
    compare.main()


if __name__ == "__main__":
    main()
