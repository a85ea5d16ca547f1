"""``make bench``: chardev-bridge against socat and stunnel as TLS client bridges (issue 5).

A benchmark, not a test: it prints a table, writes bench/results/<timestamp>.json and
bench/results/latest.json, and exits 0 even when a contestant could not be measured (that
contestant's cells read ``n/a`` and the reason is printed under the table).

All contestants run in turn on this machine against one shared far side (bench_farside.py): a
TLS server on 127.0.0.1 that requires the client certificate. Certificates are made fresh in a
temporary directory laid out as QEMU tls-creds-x509 directories. Every child process is killed
on the way out, also on errors, Ctrl-C and SIGTERM.

A fourth column, "trio floor" (bench_floor.py), is not a peer: it is the least a relay on the
bridge's own stack can do, run in the bulk and latency rounds, so that each run splits the gap to
socat and stunnel into what the stack costs and what the bridge adds.

    python bench/run.py            # the full run (a few minutes)
    python bench/run.py --quick    # small sizes, to check that it works
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import cast

import bench_measure as bm
from bench_certs import Creds, make_creds
from bench_contestants import ChardevBridge, Contestant, Setup, TrioFloor, all_contestants
from bench_procs import BenchError, Proc, Procs, wait_until
from bench_report import SUBJECT, Metric, machine, ratios_to, table, write_json

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MIB = 1 << 20
MEASUREMENTS = ("bulk", "pty", "latency", "sessions", "handshakes", "startup")
WORKAROUND_OFF = f"{SUBJECT} (workaround off)"
FLOOR = TrioFloor.name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Sizes and counts, each overridable; --quick shrinks the defaults for a smoke run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: checks the harness works")
    p.add_argument("--bulk-mib", type=int, help="bytes per bulk round, MiB (256; quick 32)")
    p.add_argument("--pty-mib", type=int, help="bytes per pty round, MiB (256; quick 32)")
    p.add_argument("--rounds", type=int, help="rounds per throughput and latency figure (5)")
    p.add_argument(
        "--round-trips", type=int, help="round trips per latency round (3000; quick 1000)"
    )
    p.add_argument("--sessions", type=int, help="idle sessions wanted (1000; quick 100)")
    p.add_argument(
        "--process-sample",
        type=int,
        default=20,
        help="bridges to average over when one process holds one session (20)",
    )
    p.add_argument("--handshake-seconds", type=float, help="per contestant (3; quick 1)")
    p.add_argument("--handshake-workers", type=int, default=4, help="parallel clients (4)")
    p.add_argument("--startup-rounds", type=int, help="start-up samples (10; quick 3)")
    p.add_argument("--only", help="comma-separated contestant names to run")
    p.add_argument(
        "--measure",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated measurements to run (default: {','.join(MEASUREMENTS)})",
    )
    p.add_argument(
        "--workaround-off-flag",
        metavar="FLAG",
        default="--no-qemu-stall-workaround",
        help="chardev-bridge's switch that turns the QEMU 7.2 stall workaround off: adds a "
        "bulk contestant without it, for comparison ('' to skip it)",
    )
    p.add_argument(
        "--bridge-src",
        type=Path,
        default=REPO / "src",
        help="the directory holding the chardev_bridge package (this repo's src/)",
    )
    args = p.parse_args(argv)
    defaults = {
        "bulk_mib": (256, 32),
        "pty_mib": (256, 32),
        "rounds": (5, 3),
        "round_trips": (3000, 1000),
        "sessions": (1000, 100),
        "handshake_seconds": (3.0, 1.0),
        "startup_rounds": (10, 3),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def make_metrics(args: argparse.Namespace) -> dict[str, Metric]:
    """The table's rows, with the issue's targets."""
    rows = [
        Metric("bulk", "bulk MB/s", True, target_ratio=1.0, target_text=">= 1.0x"),
        Metric("pty", "pty MB/s", True, peers=("socat",), target_ratio=1.0,
               target_text=">= 1.0x socat"),
        Metric("p50", "latency p50 us", False, target_ratio=1.0, target_text="<= 1.0x"),
        Metric("p99", "latency p99 us", False, target_ratio=1.2, target_text="<= 1.2x"),
        Metric("held", "idle sessions held", True, target_abs=args.sessions,
               target_text=f">= {args.sessions}"),
        Metric("mem", "KiB per idle session", False, target_abs=64, target_text="<= 64 KiB"),
        Metric("hs", "TLS handshakes/s", True, peers=("stunnel",), target_text="- (vs stunnel)"),
        Metric("start", "start-up s", False, target_abs=0.3, target_text="<= 0.3 s"),
        Metric("qemu", "QEMU 7.2 workaround cost %", False, peers=(), target_abs=5,
               target_text="<= 5 %"),
    ]  # fmt: skip
    return {m.key: m for m in rows}


Measure = Callable[[Contestant], Sequence[bm.Figure]]


def say(text: str) -> None:
    """Progress on stderr; the table goes to stdout."""
    print(text, file=sys.stderr, flush=True)


def mark_na(rows: Sequence[Metric], name: str, exc: Exception) -> None:
    """Record why `name` has no figure in these rows."""
    for row in rows:
        row.na[name] = str(exc) or repr(exc)
    say(f"  {name}: n/a: {exc}")


def each(rows: Sequence[Metric], contestants: Sequence[Contestant], measure: Measure) -> None:
    """Run one measurement for each contestant in turn; a BenchError becomes an n/a."""
    for c in contestants:
        started = time.perf_counter()
        try:
            figures = measure(c)
        except (BenchError, OSError) as exc:
            mark_na(rows, c.name, exc)
            continue
        shown = []
        for row, figure in zip(rows, figures, strict=True):
            row.values[c.name], row.details[c.name] = figure.value, figure.details
            shown.append(f"{row.label} {figure.value:.4g}")
        say(f"  {c.name}: {', '.join(shown)} ({time.perf_counter() - started:.1f} s)")


def interleaved(
    rows: Sequence[Metric],
    contestants: Sequence[Contestant],
    rounds: int,
    one: Callable[[Contestant], list[float]],
    summarize: Callable[[list[list[float]]], list[bm.Figure]],
) -> None:
    """Rounds taken round-robin across the contestants, then summarized into one figure per row.

    Round-robin, not one contestant's rounds in a row: a slow spell of this shared machine then
    hits every contestant alike instead of one contestant's whole series.
    """
    results: dict[str, list[list[float]]] = {c.name: [] for c in contestants}
    for _ in range(rounds):
        for c in contestants:
            if c.name in rows[0].na:
                continue
            try:
                results[c.name].append(one(c))
            except (BenchError, OSError) as exc:
                mark_na(rows, c.name, exc)
                continue
            shown = zip(rows, results[c.name][-1], strict=False)
            say(f"  {c.name}: " + ", ".join(f"{row.label} {value:.4g}" for row, value in shown))
    for name, rounds_done in results.items():
        if rounds_done and name not in rows[0].na:
            for row, figure in zip(rows, summarize(rounds_done), strict=True):
                row.values[name], row.details[name] = figure.value, figure.details


def throughput(rounds: list[list[float]]) -> list[bm.Figure]:
    """The median MB/s with the CPU use of each process beside it."""
    return [bm.throughput_figure(rounds, ["bridge", "farside", "harness"])]


def start_far_side(procs: Procs, creds: Creds) -> tuple[Proc, int]:
    """Start bench_farside.py and read the port it prints."""
    script = str(BENCH_DIR / "bench_farside.py")
    proc = procs.spawn("farside", [sys.executable, script, str(creds.server_dir)])
    pattern = re.compile(r"^port (\d+)$", re.MULTILINE)

    def port_line() -> re.Match[str] | None:
        return pattern.search(proc.out_path.read_text())

    wait_until(proc, lambda: port_line() is not None, "port line", 10.0)
    match = port_line()
    assert match is not None
    return proc, int(match.group(1))


def run_contestants(
    setup: Setup,
    contestants: Sequence[Contestant],
    m: dict[str, Metric],
    procs: Procs,
    data: memoryview,
    a: argparse.Namespace,
) -> None:
    """Every measurement, in the issue's order; within each, the contestants that join it in
    turn (the workaround-off variant and the trio floor join only some)."""
    todo = a.measure.split(",")

    def joining(measurement: str) -> list[Contestant]:
        return [c for c in contestants if not c.joins or measurement in c.joins]

    bulk_data, pty_data = data[: a.bulk_mib * MIB], data[: a.pty_mib * MIB]

    def bulk_round(c: Contestant) -> list[float]:
        return bm.bulk_round(procs, c, bulk_data)

    def pty_round(c: Contestant) -> list[float]:
        return bm.pty_round(procs, c, pty_data)

    def latency_round(c: Contestant) -> list[float]:
        return bm.latency_round(procs, c, a.round_trips)

    def sessions(c: Contestant) -> list[bm.Figure]:
        return bm.sessions(procs, c, a.sessions, a.process_sample)

    def handshakes(c: Contestant) -> list[bm.Figure]:
        if m["held"].values.get(c.name) == 1:
            return [bm.handshakes_one_at_a_time(procs, c, a.handshake_seconds)]
        return [bm.handshakes_shared(procs, c, a.handshake_seconds, a.handshake_workers)]

    if "bulk" in todo:
        say(f"bulk: {a.bulk_mib} MiB x {a.rounds} rounds")
        bulk = [m["bulk"]]
        interleaved(bulk, joining("bulk"), a.rounds, bulk_round, throughput)
        workaround_cost(m, setup)
    if "pty" in todo:
        say(f"pty: {a.pty_mib} MiB x {a.rounds} rounds")
        interleaved([m["pty"]], joining("pty"), a.rounds, pty_round, throughput)
    if "latency" in todo:
        say(f"latency: {a.round_trips} round trips x {a.rounds} rounds")
        rows = [m["p50"], m["p99"]]
        interleaved(rows, joining("latency"), a.rounds, latency_round, bm.latency_figures)
    if "sessions" in todo:
        say(f"sessions: {a.sessions} idle")
        each([m["held"], m["mem"]], joining("sessions"), sessions)
    if "handshakes" in todo:
        say(f"handshakes: {a.handshake_seconds} s each")
        each([m["hs"]], joining("handshakes"), handshakes)
    if "startup" in todo:
        say(f"start-up: {a.startup_rounds} rounds")
        each([m["start"]], joining("startup"), lambda c: [bm.startup(procs, c, a.startup_rounds)])


def workaround_cost(m: dict[str, Metric], setup: Setup) -> None:
    """The QEMU 7.2 stall workaround's cost, in % of the bridge's CPU time per bulk byte.

    Every contestant here is CPU-bound in bulk, so that is its cost in throughput too. The
    CPU it adds per piece is measured in the TLS engine (bench_workaround.py); comparing two
    bulk medians instead, as the workaround-off variant's column allows, only measures noise
    (-1 % to 13 % over six runs). Both figures are kept in the details.
    """
    row, bulk = m["qemu"], m["bulk"]
    if SUBJECT in row.na:
        return
    if SUBJECT not in bulk.values:
        row.na[SUBJECT] = "no bulk figure for chardev-bridge"
        return
    rounds = bulk.details[SUBJECT]
    cpu_pct = cast(list[float], rounds["bridge_cpu_pct"])
    mb_s = cast(list[float], rounds["rounds_mb_s"])
    per_gb = statistics.median(c / 100 / (r / 1000) for c, r in zip(cpu_pct, mb_s, strict=True))
    script = str(BENCH_DIR / "bench_workaround.py")
    env = {**os.environ, "PYTHONPATH": str(setup.bridge_src)}
    creds = [str(setup.creds.client_dir), str(setup.creds.server_dir)]
    try:
        done = subprocess.run(
            [sys.executable, script, *creds],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        row.na[SUBJECT] = "bench_workaround.py did not finish in 300 s"
        return
    if done.returncode != 0:
        row.na[SUBJECT] = f"bench_workaround.py failed: {done.stderr.strip()[-200:]}"
        return
    engine = json.loads(done.stdout)
    piece_us = per_gb * 1e6 * engine["piece_bytes"] / 1e9
    row.values[SUBJECT] = (engine["with_us"] - engine["without_us"]) / piece_us * 100
    row.details[SUBJECT] = {
        "engine": engine,
        "bridge_cpu_s_per_gb": round(per_gb, 3),
        "bridge_cpu_us_per_piece": round(piece_us, 1),
        "bulk_mb_s_with": bulk.values.get(SUBJECT),
        "bulk_mb_s_without": bulk.values.get(WORKAROUND_OFF),
    }


def run_reference(m: dict[str, Metric], s: Setup, data: memoryview, a: argparse.Namespace) -> None:
    """The far side reached directly by the harness's own TLS client: its headroom."""
    todo = a.measure.split(",")
    say("direct (no bridge), the far side's headroom:")
    figures: list[tuple[str, bm.Figure]] = []
    if "bulk" in todo:
        bulk = bm.bulk_direct(s.creds, s.far_pid, s.far_port, data[: a.bulk_mib * MIB], a.rounds)
        figures.append(("bulk", bulk))
    if "latency" in todo:
        p50, p99 = bm.latency_direct(s.creds, s.far_port, a.round_trips, a.rounds)
        figures += [("p50", p50), ("p99", p99)]
    if "handshakes" in todo:
        hs = bm.handshakes_direct(
            s.creds, s.far_pid, s.far_port, a.handshake_seconds, a.handshake_workers
        )
        figures.append(("hs", hs))
    for key, figure in figures:
        m[key].reference = figure.value
        m[key].details["direct"] = figure.details
        say(f"  {m[key].label} {figure.value:.4g}")


def far_side_summary(far: Proc) -> dict[str, int]:
    """How many connections used which TLS version/cipher, and how many ended in an error."""
    counts: Counter[str] = Counter()
    for line in far.err_path.read_text(errors="replace").splitlines():
        kind, _, rest = line.partition(" ")
        counts[rest if kind == "tls" else f"error {rest.split(':')[0]}"] += 1
    return dict(counts)


def run_all(args: argparse.Namespace, work: Path, procs: Procs) -> dict[str, object]:
    """Set up certificates and the far side, measure everything, return the JSON record."""
    # Bytecode, as pip writes it when it installs the package: the start-up figure is about
    # an installed bridge, not about compiling its source (PYTHONDONTWRITEBYTECODE=1, which
    # some shells set, would otherwise make every start compile every module again).
    compileall.compile_dir(str(args.bridge_src), quiet=1)
    creds = make_creds(work / "creds")
    far, far_port = start_far_side(procs, creds)
    setup = Setup(creds, far_port, far.popen.pid, far.err_path, work, args.bridge_src)
    contestants = all_contestants(setup)
    if args.only:
        contestants = [c for c in contestants if c.name in args.only.split(",")]
    metrics = make_metrics(args)
    # One buffer of random bytes for every round: what the issue asks, and TLS would not
    # compress anything anyway.
    data = memoryview(os.urandom(max(args.bulk_mib, args.pty_mib) * MIB))
    run_reference(metrics, setup, data, args)
    live: list[Contestant] = []
    for c in contestants:
        reason = c.unavailable()
        if reason is None:
            live.append(c)
            continue
        say(f"{c.name}: n/a: {reason}")
        for row in metrics.values():
            row.na[c.name] = reason
    variant: list[Contestant] = []
    if args.workaround_off_flag and any(c.name == SUBJECT for c in live):
        off = ChardevBridge(setup, [args.workaround_off_flag], WORKAROUND_OFF, joins=("bulk",))
        variant.append(off)
    run_contestants(setup, [*live, *variant], metrics, procs, data, args)
    names = [c.name for c in contestants]
    host = machine()
    print(", ".join(f"{k}: {v}" for k, v in host.items()))
    print(table(list(metrics.values()), names))
    vs_floor = ratios_to(list(metrics.values()), FLOOR)
    if vs_floor:
        shown = ", ".join(f"{metrics[k].label} {v:.2f}" for k, v in vs_floor.items())
        print(f"chardev-bridge / {FLOOR} (what the bridge adds to its stack): {shown}")
    return {
        "machine": host,
        "args": vars(args),
        "contestants": names,
        "far_side_connections": far_side_summary(far),
        "metrics": {k: m.as_json() for k, m in metrics.items()},
        "ratios_to_floor": vs_floor,
    }


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so the cleanup in main() runs."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; always kill every child process before returning."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    # 1000 sessions need ~2000 descriptors in the harness and in each bridge.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="chardev-bench-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        procs = Procs(work / "logs")
        try:
            result = run_all(args, work, procs)
        finally:
            procs.kill_all()
    result["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
    result["duration_s"] = round(time.time() - started, 1)
    path = write_json(BENCH_DIR / "results", result)
    print(f"\nwrote {path.relative_to(REPO)} and latest.json in {result['duration_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
