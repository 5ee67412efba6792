#!/usr/bin/env python3
"""Herald's benchmarks, run with the neutral load generator and peers of ../shared/bench.

This script (with the other bench scripts) is the only part of the repository that reads
../shared: it copies ../shared/bench to .bench/ (builds and results stay out of shared/), builds
Herald in release mode, and runs compare.py with the herald peer beside nginx+nchan and the Node
peer, interleaved, in the same run. Adds the rows Herald's issues ask for to compare.py's own
(S1 idle SSE, S1w idle WebSocket, S2/S3 fan-out, S4 latency, S5 long polling):

  LP10k  10,000 concurrent long polls held, then answered: memory per held long poll and
         answer latency (issue 2)
  C15k   15,000 idle SSE connections held 20 s while /healthz is timed every 50 ms (issue 18;
         the open-files cap here is 20,000 per process)

With --before REV, Herald at git revision REV (or the binary at path REV) is built too (a worktree in .bench/) and measured
as the peer "herald-before" in the same run. Afterwards the medians are drawn (matplotlib, from
PyPI: .venv/bin/pip install matplotlib) into docs/bench/<run>-*.png, <run> being the name of the
run's results file; --charts RESULTS.jsonl draws an earlier run's again.

Usage: scripts/bench.py [--before REV] [--peers nchan,node,herald] [--scenarios S1,S2]
                        [--reps 3] [compare.py options]
       scripts/bench.py --charts .bench/results/<run>.jsonl
"""

import glob
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import ROOT, release_binary  # noqa: E402

SOURCE = pathlib.Path(os.environ.get("HERALD_BENCH_DIR", ROOT.parent / "shared" / "bench"))
WORK = ROOT / ".bench"
CHARTS = ROOT / "docs" / "bench"

SCENARIOS = {
    "LP10k": dict(title="10,000 long polls held, then answered (5 messages at 1 msg/s)",
                  transport="lp", n=10000, m=5, args=["--rate", "1", "--settle", "3"], n_min=1000),
    "C15k": dict(title="15,000 idle SSE connections held 20 s; Herald's /healthz timed meanwhile",
                 transport="sse", n=15000, m=0, args=["--settle", "3", "--hold", "20"], n_min=1000),
}
ALL = ["S1", "S1w", "LP10k", "S2", "S3", "S4", "S5", "C15k"]
HERALD_PORT = "7104"


def take_option(name):
    """Removes `--name VALUE` (or `--name=VALUE`) from the command line; its value."""
    for i, arg in enumerate(sys.argv):
        if arg == name and i + 1 < len(sys.argv):
            value = sys.argv[i + 1]
            del sys.argv[i:i + 2]
            return value
        if arg.startswith(name + "="):
            del sys.argv[i]
            return arg.split("=", 1)[1]
    return None


def build_before(revision):
    """The peer "herald-before": a release build of Herald at git `revision`, in a worktree of
    its own, or `revision` itself when it names a binary."""
    binary = pathlib.Path(revision)
    if not binary.is_file():
        tree = WORK / f"before-{revision}"
        if not tree.exists():
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=ROOT, check=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "herald", "--scratch-path", ".build-release"],
                       cwd=tree, check=True)
        binary = tree / ".build-release" / "release" / "herald"
    peer = WORK / "peers" / "herald-before"
    peer.mkdir(parents=True, exist_ok=True)
    (peer / "peer.json").write_text(json.dumps({
        "base": "herald", "description": f"Herald before ({revision})", "env": {"HERALD_BIN": str(binary.resolve())},
    }))
    return "herald-before"


class HealthProbe:
    """Times GET /healthz on a new connection every 50 ms during a run: while its connections
    open, and while they are held (from `connect_s` + the 3 s settle on)."""

    def __init__(self):
        self.start = time.monotonic()
        self.times, self.failures = [], 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.wait(0.05):
            start = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{HERALD_PORT}/healthz", timeout=5) as answer:
                    answer.read()
                self.times.append((start - self.start, (time.monotonic() - start) * 1000))
            except OSError:
                self.failures += 1

    @staticmethod
    def stats(times):
        times = sorted(times)
        if not times:
            return {"n": 0}
        return {"n": len(times), "p50": round(times[len(times) // 2], 2),
                "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2), "max": round(times[-1], 2)}

    def stop(self, held_from):
        self.done.set()
        self.thread.join()
        return {"failures": self.failures,
                "opening": self.stats([ms for at, ms in self.times if at < held_from]),
                "held": self.stats([ms for at, ms in self.times if at >= held_from])}


def probing(run_fanout):
    """compare.run_fanout, timing /healthz during the C15k rows of a Herald peer."""
    def run(cmd, pin):
        probe = None
        if any("/C15k/" in arg for arg in cmd) and any(f":{HERALD_PORT}/" in arg for arg in cmd):
            probe = HealthProbe()
        result = None
        try:
            result = run_fanout(cmd, pin)
        finally:
            if probe:
                health = probe.stop(held_from=(result or {}).get("connect_s", 0) + 3)
                if result:
                    result["healthz_ms"] = health
        return result
    return run


def newest_results():
    files = sorted(glob.glob(str(WORK / "results" / "*.jsonl")), key=os.path.getmtime)
    return files[-1] if files else None


def medians(path):
    """(scenario, peer) -> the medians over its runs, and every run's /healthz times."""
    rows = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "scenario" in row and "peer" in row:
                rows.setdefault((row["scenario"], row["peer"]), []).append(row)

    def median(runs, key, sub=None):
        values = [(run.get(key) or {}).get(sub) if sub else run.get(key) for run in runs]
        values = [v for v in values if v is not None and v >= 0]
        return statistics.median(values) if values else None

    return {key: dict(kib=median(runs, "kib_per_conn"), rate=median(runs, "delivered_per_s"),
                      p99=median(runs, "lat_ms", "p99"), health=[r["healthz_ms"] for r in runs if "healthz_ms" in r])
            for key, runs in rows.items()}


def draw(summary, stamp):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no charts: matplotlib is missing (.venv/bin/pip install matplotlib)", file=sys.stderr)
        return
    CHARTS.mkdir(parents=True, exist_ok=True)
    peers = sorted({peer for _, peer in summary}, key=lambda p: (p != "herald", p))
    charts = [("memory", "KiB per connection (lower is better)", "kib", ["S1", "S1w", "LP10k", "C15k"]),
              ("throughput", "delivered msg/s (higher is better)", "rate", ["S2", "S3", "S5"]),
              ("p99", "p99 latency, ms, log scale (lower is better)", "p99", ["S2", "S3", "S4", "S5", "LP10k"])]
    for name, label, key, scenarios in charts:
        scenarios = [s for s in scenarios if any((s, p) in summary for p in peers)]
        if not scenarios:
            continue
        figure, axes = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(peers)
        for i, peer in enumerate(peers):
            values = [(summary.get((s, peer)) or {}).get(key) or 0 for s in scenarios]
            bars = axes.bar([x + i * width for x in range(len(scenarios))], values, width, label=peer)
            axes.bar_label(bars, fmt=lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.3g}", fontsize=7)
        axes.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(scenarios))], scenarios)
        if key == "p99":
            axes.set_yscale("log")  # S4's tenths of a millisecond beside LP10k's hundreds
        axes.set_ylabel(label)
        axes.set_title(f"{label.split(' (')[0]}, run {stamp}")
        axes.legend()
        figure.tight_layout()
        figure.savefig(CHARTS / f"{stamp}-{name}.png", dpi=110)
        plt.close(figure)
        print(f"chart: {CHARTS / f'{stamp}-{name}.png'}", file=sys.stderr)


def chart(path):
    """Prints the /healthz times of the run in the `path` (a .jsonl) and draws its medians."""
    summary = medians(path)
    for (scenario, peer), cell in sorted(summary.items()):
        for health in cell["health"]:
            print(f"{scenario} {peer}: /healthz {health}")
    draw(summary, pathlib.Path(path).stem)


def main():
    earlier = take_option("--charts")
    if earlier:
        return chart(earlier)
    if not (SOURCE / "compare.py").exists():
        sys.exit(f"no load generator at {SOURCE}; set HERALD_BENCH_DIR")
    shutil.copytree(SOURCE, WORK, dirs_exist_ok=True, ignore=shutil.ignore_patterns("run", "results", "fanout"))
    subprocess.run(["make", "-s"], cwd=WORK, check=True)
    before = take_option("--before")
    os.environ["HERALD_BIN"] = release_binary()
    sys.path.insert(0, str(WORK))
    import compare  # noqa: E402  (the copied compare.py)

    compare.SCENARIOS.update(SCENARIOS)
    compare.run_fanout = probing(compare.run_fanout)
    peers = take_option("--peers") or "nchan,node,herald"
    if before:
        peers += "," + build_before(before)
    sys.argv += ["--peers", peers]
    if not any(arg.startswith("--scenarios") for arg in sys.argv[1:]):
        sys.argv += ["--scenarios", ",".join(ALL)]
    if not any(arg.startswith("--ref") for arg in sys.argv[1:]):
        sys.argv += ["--ref", "nchan"]
    compare.main()
    path = newest_results()
    if path:
        chart(path)


if __name__ == "__main__":
    main()
