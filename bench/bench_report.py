"""Metrics, ratios against the best peer, the printed table and the JSON record."""

from __future__ import annotations

import json
import operator
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SUBJECT = "chardev-bridge"
PEERS = ("socat", "stunnel")
Compare = Callable[[float, float], bool]


@dataclass
class Metric:
    """One row of the table: a figure per contestant, the ratio and the issue's target.

    `target_ratio` is checked against chardev-bridge / best peer, `target_abs` against
    chardev-bridge's own figure, `target_slack` against the best peer's figure plus (or, when
    higher is better, minus) that much; any of them may be absent. `peers` are what the ratio is
    taken against: socat and stunnel, or the trio floor for the rows whose target is relative
    to the bridge's own stack.
    """

    key: str
    label: str
    higher_is_better: bool
    peers: tuple[str, ...] = PEERS
    target_ratio: float | None = None
    target_abs: float | None = None
    target_slack: float | None = None
    target_text: str = "-"
    values: dict[str, float] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)
    details: dict[str, dict[str, object]] = field(default_factory=dict)
    reference: float | None = None  # the far side reached directly, no bridge

    def best_peer(self, peers: tuple[str, ...] | None = None) -> tuple[str, float] | None:
        """The best measured of `peers` (default: the row's) and its figure."""
        measured = [(self.values[p], p) for p in peers or self.peers if p in self.values]
        if not measured:
            return None
        value, name = max(measured) if self.higher_is_better else min(measured)
        return name, value

    def ratio(self, peers: tuple[str, ...] | None = None) -> float | None:
        """chardev-bridge / best of `peers` (default: the row's), when both were measured."""
        best = self.best_peer(peers)
        if best is None or SUBJECT not in self.values or best[1] == 0:
            return None
        return self.values[SUBJECT] / best[1]

    def met(self) -> bool | None:
        """Whether every target this row has is reached; None if it cannot be told."""
        better: Compare = operator.ge if self.higher_is_better else operator.le
        checks = []
        if self.target_ratio is not None:
            ratio = self.ratio()
            checks.append(None if ratio is None else better(ratio, self.target_ratio))
        mine = self.values.get(SUBJECT)
        if self.target_abs is not None:
            checks.append(None if mine is None else better(mine, self.target_abs))
        if self.target_slack is not None:
            best = self.best_peer()
            slack = -self.target_slack if self.higher_is_better else self.target_slack
            checks.append(None if mine is None or best is None else better(mine, best[1] + slack))
        if not checks or None in checks:
            return None
        return all(checks)

    def as_json(self) -> dict[str, object]:
        """The row as plain data."""
        best = self.best_peer()
        return {
            "label": self.label,
            "higher_is_better": self.higher_is_better,
            "values": self.values,
            "na": self.na,
            "reference_direct": self.reference,
            "best_peer": best[0] if best else None,
            "ratio": self.ratio(),
            "target": self.target_text,
            "target_abs": self.target_abs,
            "target_slack": self.target_slack,
            "target_met": self.met(),
            "details": self.details,
        }


def fmt(value: float | None) -> str:
    """Three significant figures, or '-'."""
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def cell(metric: Metric, name: str) -> str:
    """A contestant's figure, or 'n/a' when it has a reason instead."""
    if name in metric.values:
        return fmt(metric.values[name])
    return "n/a" if name in metric.na else "-"


def table(metrics: list[Metric], names: list[str]) -> str:
    """The results as an aligned text table, then the n/a reasons."""
    head = ["figure", *names, "direct", "ratio", "vs", "target", "met"]
    rows = [head]
    for m in metrics:
        met = {True: "yes", False: "NO", None: "-"}[m.met()]
        best = m.best_peer()
        peer = best[0] if best else "-"
        figures = [cell(m, n) for n in names]
        rows.append([m.label, *figures, fmt(m.reference), fmt(m.ratio()), peer, m.target_text, met])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = sorted({f"{n}: n/a: {why}" for m in metrics for n, why in m.na.items()})
    return "\n".join([*lines, "", *notes])


def ratios_to(metrics: list[Metric], reference: str) -> dict[str, float]:
    """chardev-bridge / `reference` for each row where both were measured."""
    ratios = {}
    for m in metrics:
        mine, theirs = m.values.get(SUBJECT), m.values.get(reference)
        if mine is not None and theirs:
            ratios[m.key] = mine / theirs
    return ratios


def first_line(argv: list[str]) -> str:
    """The first non-empty output line of a version command ('' if it cannot run)."""
    if shutil.which(argv[0]) is None:
        return ""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines()]
    wanted = [ln for ln in lines if re.search(r"\d+\.\d+", ln) and "inetd" not in ln]
    return wanted[0] if wanted else ""


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    cpu = ""
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "openssl": ssl.OPENSSL_VERSION,
        "socat": first_line(["socat", "-V"]),
        "stunnel": first_line(["stunnel", "-version"]),
    }


def write_json(results_dir: Path, record: dict[str, object]) -> Path:
    """Write bench/results/<timestamp>.json and latest.json; return the first."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    path = results_dir / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    return path
