"""``make bench``: chardev-bridge against socat and stunnel as TLS client bridges (issue 5).

A benchmark, not a test: it prints a table, writes bench/results/<timestamp>.json and
bench/results/latest.json, and exits 0 even when a contestant could not be measured (that
contestant's cells read ``n/a`` and the reason is printed under the table).

All contestants run in turn on this machine against one shared far side (bench_farside.py): a
TLS server on 127.0.0.1, in its own process, that requires the client certificate, and either
answers (``R`` when the path is up, ``K`` when all bytes are in, an echo) or stays silent (it
never sends a byte and reports to the harness over a unix datagram socket instead). Its headroom
is measured in every run (`far_side_headroom`). Certificates are made fresh in a temporary
directory laid out as QEMU tls-creds-x509 directories. Every child process is killed on the way
out, also on errors, Ctrl-C and SIGTERM.

A fourth column, "trio floor" (bench_floor.py), is not a peer: it is the least a relay on the
bridge's own stack can do, run in the bulk, latency and first-byte rounds, so that each run
splits the gap to socat and stunnel into what the stack costs and what the bridge adds. The
latency targets are relative to it; in the idle-memory row the same column holds the import
floor (the interpreter with ``import trio, ssl, cryptography.x509`` and nothing else).

    python bench/run.py            # the full run (a few minutes)
    python bench/run.py --quick    # small sizes, to check that it works
    python bench/run.py --quick --measure pty-latency --only chardev-bridge,socat
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
from bench_farside import Reports
from bench_procs import BenchError, Proc, Procs, wait_until
from bench_report import PEERS, SUBJECT, Metric, machine, ratios_to, table, write_json

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MIB = 1 << 20
MEASUREMENTS = (
    "bulk", "bulk-silent", "pty", "pty-silent", "latency", "pty-latency", "first-byte",
    "sessions", "handshakes", "startup", "idle-memory",
)  # fmt: skip
IDLE_SLACK_MIB = 4  # CLARIFICATIONS.md, issue 15: one idle bridge <= the import floor + 4 MiB
# Where the bridge's replay window is defined, and its three constants: the first-byte rows'
# target is "no added wait beyond the window", so the bench reads the window from the code it
# measures.
BRIDGE_MODULE = Path("chardev_bridge") / "bridge" / "replay.py"
WINDOW_CONSTANTS = ("REPLAY_WINDOW_FLOOR", "REPLAY_WINDOW_HANDSHAKES", "QUICK_REJECT_SECONDS")
# The far side's headroom: which row shows it, measured with which record size. 16 KiB is what
# every contestant sends in bulk; 4 KiB is a pty read's size, socat's record size on a pty.
CAPACITY_RECORDS = {
    "bulk_q": (("bulk", "bulk-silent"), 16 << 10),
    "pty_q": (("pty", "pty-silent"), 4 << 10),
}
HEADROOM = 1.25  # how far the far side's own speed must be ahead of the fastest contestant
WORKAROUND_OFF = f"{SUBJECT} (workaround off)"
FLOOR = TrioFloor.name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Sizes and counts, each overridable; --quick shrinks the defaults for a smoke run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: checks the harness works")
    p.add_argument("--bulk-mib", type=int, help="bytes per bulk round, MiB (256; quick 32)")
    p.add_argument("--pty-mib", type=int, help="bytes per pty round, MiB (256; quick 32)")
    p.add_argument(
        "--fresh-mib",
        type=int,
        help="bytes pushed into each new silent session, MiB (64; quick 16)",
    )
    p.add_argument("--idle-rounds", type=int, help="idle-memory samples per process (3; quick 2)")
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
        "fresh_mib": (64, 16),
        "idle_rounds": (3, 2),
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
    socat, floor = ("socat",), (FLOOR,)
    rows = [
        Metric("bulk", "bulk MB/s, far side answers", True, target_ratio=1.0,
               target_text=">= 1.0x"),
        Metric("bulk_q", "bulk MB/s, far side silent", True, target_ratio=1.0,
               target_text=">= 1.0x"),
        Metric("pty", "pty MB/s, far side answers", True, peers=socat, target_ratio=1.0,
               target_text=">= 1.0x socat"),
        Metric("pty_q", "pty MB/s, far side silent", True, peers=socat, target_ratio=1.0,
               target_text=">= 1.0x socat"),
        Metric("p50", "latency p50 us", False, peers=floor, target_ratio=1.15,
               target_text="<= 1.15x floor"),
        Metric("p99", "latency p99 us", False, peers=floor, target_ratio=1.3,
               target_text="<= 1.3x floor"),
        Metric("pty_p50", "pty keystroke echo p50 us", False, peers=socat,
               target_text="- (vs socat)"),
        Metric("pty_p99", "pty keystroke echo p99 us", False, peers=socat,
               target_text="- (vs socat)"),
        Metric("first", "first byte, new silent session, ms", False,
               target_text="<= best + window"),
        Metric("fresh", f"{args.fresh_mib} MiB, new silent session, s", False,
               target_text="<= best + window"),
        Metric("held", "idle sessions held", True, target_abs=args.sessions,
               target_text=f">= {args.sessions}"),
        Metric("mem", "KiB per idle session", False, target_abs=64, target_text="<= 64 KiB"),
        Metric("hs", "TLS handshakes/s", True, peers=("stunnel",), target_text="- (vs stunnel)"),
        Metric("start", "start-up s", False, target_abs=0.3, target_text="<= 0.3 s"),
        Metric("idle", "idle process RSS MiB (floor: imports)", False, peers=floor,
               target_text=f"<= floor + {IDLE_SLACK_MIB} MiB"),
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


def start_far_side(procs: Procs, creds: Creds, reports: Reports) -> tuple[Proc, int]:
    """Start bench_farside.py, reporting to `reports`, and read the port it prints."""
    script = str(BENCH_DIR / "bench_farside.py")
    argv = [sys.executable, script, str(creds.server_dir), str(reports.path)]
    proc = procs.spawn("farside", argv)
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

    def silent_round(c: Contestant) -> list[float]:
        return bm.silent_round(procs, c, bulk_data)

    def silent_pty_round(c: Contestant) -> list[float]:
        return bm.silent_pty_round(procs, c, pty_data)

    def latency_round(c: Contestant) -> list[float]:
        return bm.latency_round(procs, c, a.round_trips)

    def pty_latency_round(c: Contestant) -> list[float]:
        return bm.pty_latency_round(procs, c, a.round_trips)

    def fresh_round(c: Contestant) -> list[float]:
        return bm.fresh_session_round(procs, c, data[: a.fresh_mib * MIB])

    def silent(rounds: list[list[float]]) -> list[bm.Figure]:
        return [bm.silent_figure(rounds)]

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
    if "bulk-silent" in todo:
        say(f"bulk, silent far side: {a.bulk_mib} MiB x {a.rounds} rounds")
        interleaved([m["bulk_q"]], joining("bulk-silent"), a.rounds, silent_round, silent)
    if "pty" in todo:
        say(f"pty: {a.pty_mib} MiB x {a.rounds} rounds")
        interleaved([m["pty"]], joining("pty"), a.rounds, pty_round, throughput)
    if "pty-silent" in todo:
        say(f"pty, silent far side: {a.pty_mib} MiB x {a.rounds} rounds")
        interleaved([m["pty_q"]], joining("pty-silent"), a.rounds, silent_pty_round, silent)
    if "latency" in todo:
        say(f"latency: {a.round_trips} round trips x {a.rounds} rounds")
        rows = [m["p50"], m["p99"]]
        interleaved(rows, joining("latency"), a.rounds, latency_round, bm.latency_figures)
    if "pty-latency" in todo:
        say(f"pty keystroke latency: {a.round_trips} round trips x {a.rounds} rounds")
        rows = [m["pty_p50"], m["pty_p99"]]
        interleaved(rows, joining("pty-latency"), a.rounds, pty_latency_round, bm.latency_figures)
    if "first-byte" in todo:
        say(f"new sessions to the silent far side: {a.fresh_mib} MiB x {a.rounds} rounds")
        rows = [m["first"], m["fresh"]]
        interleaved(rows, joining("first-byte"), a.rounds, fresh_round, bm.fresh_session_figures)
        replay_window_slack(m, a.bridge_src)
    if "sessions" in todo:
        say(f"sessions: {a.sessions} idle")
        each([m["held"], m["mem"]], joining("sessions"), sessions)
    if "handshakes" in todo:
        say(f"handshakes: {a.handshake_seconds} s each")
        each([m["hs"]], joining("handshakes"), handshakes)
    if "startup" in todo:
        say(f"start-up: {a.startup_rounds} rounds")
        each([m["start"]], joining("startup"), lambda c: [bm.startup(procs, c, a.startup_rounds)])
    if "idle-memory" in todo:
        say(f"idle memory: {a.idle_rounds} rounds")
        idle_memory(m["idle"], joining("idle-memory"), procs, a.idle_rounds)


def idle_memory(row: Metric, contestants: Sequence[Contestant], procs: Procs, rounds: int) -> None:
    """One idle process's RSS per contestant, and the import floor in the floor column; the
    target is that floor + IDLE_SLACK_MIB, both from this run."""
    try:
        floor = bm.import_floor_rss(procs, rounds)
    except (BenchError, OSError) as exc:
        mark_na([row], FLOOR, exc)
    else:
        row.values[FLOOR], row.details[FLOOR] = floor.value, floor.details
        row.target_abs = floor.value + IDLE_SLACK_MIB
        row.target_text = f"<= {row.target_abs:.1f} (floor + {IDLE_SLACK_MIB})"
        say(f"  import floor: {floor.value:.1f} MiB")
    each([row], contestants, lambda c: [bm.idle_rss(procs, c, rounds)])


def replay_window_constants(bridge_src: Path) -> dict[str, float]:
    """REPLAY_WINDOW_FLOOR, REPLAY_WINDOW_HANDSHAKES and QUICK_REJECT_SECONDS as the bridge
    under test defines them ({} when they cannot all be found)."""
    try:
        text = (bridge_src / BRIDGE_MODULE).read_text()
    except OSError:
        return {}
    found = {}
    for name in WINDOW_CONSTANTS:
        match = re.search(rf"^{name}\s*=\s*([0-9.]+)\s*$", text, re.MULTILINE)
        if match:
            found[name] = float(match.group(1))
    return found if len(found) == len(WINDOW_CONSTANTS) else {}


def replay_window_slack(m: dict[str, Metric], bridge_src: Path) -> None:
    """Set the first-byte rows' slack to the replay window the bridge chose in its rounds.

    The window is a multiple of the bridge's handshake duration, with a floor and a cap
    (bridge.replay.replay_window); the handshake duration taken here is the far side's (accept to
    handshake done), median of the bridge's rounds: a little shorter than the bridge's own
    reading, so the slack errs on the strict side.
    """
    constants = replay_window_constants(bridge_src)
    first, fresh = m["first"], m["fresh"]
    handshakes = cast(list[float], first.details.get(SUBJECT, {}).get("far_side_handshake_s"))
    if not constants or not handshakes:
        why = f"no replay window constants in {BRIDGE_MODULE}" if not constants else ""
        for row in (first, fresh):
            row.details["window"] = {"n/a": why or "no rounds of chardev-bridge"}
        return
    floor, times, cap = (constants[name] for name in WINDOW_CONSTANTS)
    window = min(cap, max(floor, times * statistics.median(handshakes)))
    first.target_slack, fresh.target_slack = window * 1000, window
    first.target_text = f"<= best + {window * 1000:.0f} ms"
    fresh.target_text = f"<= best + {window:.2f} s"
    for row in (first, fresh):
        row.details["window"] = {"window_s": round(window, 4), **constants}
    say(f"  the bridge's replay window in these rounds: {window:.3f} s")


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
    """The far side reached directly by the harness's own TLS client (the ``direct`` column),
    and the silent far side's own speed (`far_side_capacity`): its headroom."""
    todo = a.measure.split(",")
    say("direct (no bridge), the far side's headroom:")
    figures: list[tuple[str, bm.Figure]] = []
    if "bulk" in todo:
        bulk = bm.bulk_direct(s.creds, s.far_pid, s.far_port, data[: a.bulk_mib * MIB], a.rounds)
        figures.append(("bulk", bulk))
    if "latency" in todo:
        p50, p99 = bm.latency_direct(s.creds, s.far_port, a.round_trips, a.rounds)
        figures += [("p50", p50), ("p99", p99)]
    for key, (measurements, record) in CAPACITY_RECORDS.items():
        if set(measurements) & set(todo):
            size = (a.pty_mib if key == "pty_q" else a.bulk_mib) * MIB
            figures.append((key, far_side_capacity(s, data[:size], record, a.rounds)))
    if "handshakes" in todo:
        hs = bm.handshakes_direct(
            s.creds, s.far_pid, s.far_port, a.handshake_seconds, a.handshake_workers
        )
        figures.append(("hs", hs))
    for key, figure in figures:
        m[key].reference = figure.value
        m[key].details["direct"] = figure.details
        say(f"  {m[key].label} {figure.value:.4g}")


def far_side_capacity(setup: Setup, data: memoryview, record: int, rounds: int) -> bm.Figure:
    """The silent far side's own speed with ciphertext in `record`-byte records, poured from
    memory: what no contestant's figure may reach if the far side is not to limit it."""
    results = [bm.far_side_capacity(setup, data, record) for _ in range(rounds)]
    figure = bm.throughput_figure(results, ["farside", "harness"])
    figure.details["record_bytes"] = record
    return figure


def far_side_headroom(m: dict[str, Metric]) -> dict[str, object]:
    """For each throughput row: the far side's capacity against the fastest contestant's figure
    (each contestant's median), and whether it was at least HEADROOM times ahead, so that it
    could not be what limited any contestant.

    The capacity is the silent far side's (`far_side_capacity`), for the answering rows too: both
    sink through the same `Conn`. The answering bulk row's ``direct`` figure is not used: there
    the harness's own TLS client, not the far side, sets the pace.
    """
    check: dict[str, object] = {}
    for key, capacity_key in (("bulk", "bulk_q"), ("bulk_q", "bulk_q"), ("pty", "pty_q"),
                              ("pty_q", "pty_q")):  # fmt: skip
        capacity, row = m[capacity_key].reference, m[key]
        if capacity is None or not row.values:
            continue
        fastest = max(row.values, key=lambda name: row.values[name])
        ahead = capacity / row.values[fastest]
        check[key] = {"capacity_mb_s": round(capacity, 1), "fastest": fastest,
                      "fastest_mb_s": round(row.values[fastest], 1), "times_ahead": round(ahead, 2),
                      "ok": ahead >= HEADROOM}  # fmt: skip
    return check


def headroom_text(headroom: dict[str, object]) -> str:
    """One line per throughput row: the far side's capacity against the fastest contestant."""
    lines = [f"far side headroom (its own speed must be >= {HEADROOM}x the fastest contestant):"]
    for key, check in headroom.items():
        c = cast(dict[str, object], check)
        verdict = "ok" if c["ok"] else "NOT ENOUGH: the far side may have limited this row"
        lines.append(
            f"  {key}: {c['capacity_mb_s']} MB/s vs {c['fastest']} {c['fastest_mb_s']} MB/s "
            f"({c['times_ahead']}x): {verdict}"
        )
    return "\n".join(lines)


def ratios_to_peers(metrics: dict[str, Metric]) -> dict[str, float]:
    """chardev-bridge / best of socat and stunnel in the rows whose own ratio is taken against
    the floor column (latency, idle memory), so that those ratios are shown too."""
    ratios = {}
    for key, m in metrics.items():
        ratio = m.ratio(PEERS) if m.peers == (FLOOR,) else None
        if ratio is not None:
            ratios[key] = ratio
    return ratios


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
    reports = Reports(work / "reports.sock")
    far, far_port = start_far_side(procs, creds, reports)
    setup = Setup(creds, far_port, far.popen.pid, far.err_path, work, args.bridge_src, reports)
    contestants = all_contestants(setup)
    if args.only:
        contestants = [c for c in contestants if c.name in args.only.split(",")]
    metrics = make_metrics(args)
    # One buffer of random bytes for every round: what the issue asks, and TLS would not
    # compress anything anyway.
    data = memoryview(os.urandom(max(args.bulk_mib, args.pty_mib, args.fresh_mib) * MIB))
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
    vs_peers = ratios_to_peers(metrics)
    if vs_peers:
        shown = ", ".join(f"{metrics[k].label} {v:.2f}" for k, v in vs_peers.items())
        print(f"chardev-bridge / best of socat and stunnel, rows against the floor: {shown}")
    headroom = far_side_headroom(metrics)
    print(headroom_text(headroom))
    reports.close()
    return {
        "machine": host,
        "args": vars(args),
        "contestants": names,
        "far_side_connections": far_side_summary(far),
        "metrics": {k: m.as_json() for k, m in metrics.items()},
        "ratios_to_floor": vs_floor,
        "ratios_to_best_peer_where_target_is_floor": vs_peers,
        "far_side_headroom": headroom,
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
