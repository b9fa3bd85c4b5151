"""The printed table, the target ratios, and the JSON summary."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchlib.certrules import CERT_RULES
from benchlib.servers import Kind
from benchlib.workloads import Plan, Results, main_concurrency, point_key

Cell = dict[str, float]


def spread(values: Sequence[float]) -> Cell:
    """Median, min and max of one measurement over the runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(results: Results) -> dict[str, dict[str, dict[str, Cell]]]:
    """Median, min and max of every numeric field, by measurement and server."""
    out: dict[str, dict[str, dict[str, Cell]]] = {}
    for key, by_server in results.samples.items():
        for server, samples in by_server.items():
            fields = {
                f
                for s in samples
                for f, v in s.items()
                if isinstance(v, int | float) and f != "run"  # which run: not a figure
            }
            out.setdefault(key, {})[server] = {
                f: spread([float(s[f]) for s in samples if f in s]) for f in sorted(fields)
            }
    return out


def _num(value: float) -> str:
    """Three significant digits or so: enough for numbers that move by percents."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass(frozen=True)
class Row:
    """One line of the table: a field of one measurement, for every server."""

    label: str
    key: str
    field: str
    client_cpu: bool = False  # show the client's CPU share for this measurement


def _rows(plan: Plan) -> list[Row]:
    main = main_concurrency(plan)
    rows: list[Row] = []
    for version in plan.versions:
        for c in plan.concurrencies:
            key = point_key(False, c, version)
            rows += [
                Row(f"full c={c} TLS {version}: sessions/s", key, "rate", client_cpu=True),
                Row(f"full c={c} TLS {version}: p50 ms", key, "p50_ms"),
                Row(f"full c={c} TLS {version}: p99 ms", key, "p99_ms"),
            ]
        # Where the CPU of a session goes, at the concurrency of the main targets.
        key = point_key(False, main, version)
        for who in ("server", "prog", "client"):
            rows.append(Row(f"{who} CPU µs/session c={main} TLS {version}", key, f"{who}_cpu_us"))
    for c in plan.concurrencies:
        key = point_key(True, c, plan.versions[0])
        label = f"resumed c={c} TLS {plan.versions[0]}"
        rows += [
            Row(f"{label}: sessions/s", key, "rate", client_cpu=True),
            Row(f"{label}: p99 ms", key, "p99_ms"),
        ]
    mib = {"down": plan.down, "up": plan.up, "echo": plan.echo}
    for workload in ("down", "up", "echo"):
        rows.append(Row(f"{workload} MB/s ({mib[workload] >> 20} MiB)", workload, "mbps", True))
    for workload in ("down", "up", "echo"):
        for who in ("server", "prog", "client"):
            rows.append(Row(f"{workload}: {who} CPU µs/MiB", workload, f"{who}_cpu_us_per_mib"))
        rows.append(Row(f"{workload}: machine idle %", workload, "machine_idle_pct"))
    rows += [
        Row(f"KiB per idle session (N={plan.idle})", "idle", "kib_per_session"),
        Row("idle server: PSS MiB", "idle", "idle_pss_mib"),
        Row("idle server: RSS MiB", "idle", "idle_rss_mib"),
        Row(f"{plan.quiet_load:g} s of load: most processes", "quiet", "most_processes"),
        Row(f"then {plan.quiet:g} s quiet: processes", "quiet", "processes"),
        Row(f"then {plan.quiet:g} s quiet: PSS MiB", "quiet", "pss_mib"),
    ]
    return rows


def cell(results: Results, key: str, field: str, server: str) -> str:
    """One server's figure: median (min-max) over the runs; ! if a session failed."""
    every = results.samples.get(key, {}).get(server, [])
    failed = " !" if any(s.get("errors") for s in every) else ""
    samples = [s for s in every if field in s]
    if not samples:
        return "-" + failed
    c = spread([float(s[field]) for s in samples])
    text = _num(c["median"])
    if len(samples) > 1:
        text += f" ({_num(c['min'])}-{_num(c['max'])})"
    return text + failed


def _first(results: Results, server: str, field: str) -> str:
    for key in results.samples:
        for sample in results.samples[key].get(server, []):
            if sample.get(field):
                return str(sample[field])
    return "-"


def _resumption(results: Results, server: str, plan: Plan) -> str:
    samples = [
        s
        for c in plan.concurrencies
        for s in results.samples.get(point_key(True, c, plan.versions[0]), {}).get(server, [])
        if "resumed" in s
    ]
    if not samples:
        return "-"
    kinds = sorted({s["resume_kind"] for s in samples if s.get("resume_kind")})
    share = statistics.median(float(s["resumed"]) for s in samples)
    return f"{'/'.join(kinds) or 'none'} {share:.0%}"


def _client_cpu(results: Results, key: str) -> str:
    """The load client's CPU per session (or per MiB), lowest to highest median
    over the servers: what it took from the machine the servers share."""
    field = "client_cpu_us" if key.startswith(("full", "resumed")) else "client_cpu_us_per_mib"
    medians = [
        statistics.median(per_run)
        for samples in results.samples.get(key, {}).values()
        if (per_run := [float(s[field]) for s in samples if field in s])
    ]
    if not medians:
        return ""
    low, high = _num(min(medians)), _num(max(medians))
    return low if low == high else f"{low}-{high}"


def align(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    )


def table(results: Results, kinds: Sequence[Kind], plan: Plan) -> str:
    """The main table: one column per server, one row per measured figure."""
    servers = [k for k in kinds if any(k.name in by for by in results.samples.values())]
    header = ["", *(k.label for k in servers), "client CPU µs"]
    body: list[list[str]] = [
        ["protocol", *(_first(results, k.name, "protocol") for k in servers), ""],
        ["cipher", *(_first(results, k.name, "cipher") for k in servers), ""],
    ]
    if any(s.get("alpn") for by in results.samples.values() for v in by.values() for s in v):
        body.append(["ALPN protocol", *(_first(results, k.name, "alpn") for k in servers), ""])
    if not plan.handshakes_only:
        resumption = (_resumption(results, k.name, plan) if k.tls else "-" for k in servers)
        body.append(["resumption (share resumed)", *resumption, ""])
    for row in _rows(plan):
        if not any(row.field in s for by in results.samples.get(row.key, {}).values() for s in by):
            continue  # not measured in this run (--only, or no server it applies to)
        cells = [cell(results, row.key, row.field, k.name) for k in servers]
        cpu = _client_cpu(results, row.key) if row.client_cpu else ""
        body.append([row.label, *cells, cpu])
    return align([header, *body])


def pairs(results: Results, kinds: Sequence[Kind], plan: Plan) -> list[dict[str, Any]]:
    """For each server measured with its baseline (Kind.baseline), at each
    sessions point: the ratio of its figure to the baseline's in each run (the
    two measured one after the other, in alternating order), and their spread."""
    names = {k.name for k in kinds}
    out: list[dict[str, Any]] = []
    for kind in kinds:
        if not kind.baseline or kind.baseline not in names:
            continue
        for key, by_server in results.samples.items():
            if not key.startswith(("full", "resumed")):
                continue
            mine, base = (
                {s["run"]: s for s in by_server.get(name, []) if "run" in s}
                for name in (kind.name, kind.baseline)
            )
            runs = sorted(mine.keys() & base.keys())
            if not runs:
                continue
            entry: dict[str, Any] = {
                "server": kind.name,
                "baseline": kind.baseline,
                "point": key,
                "runs": runs,
                "failed_runs": [r for r in runs if mine[r].get("errors") or base[r].get("errors")],
                # server processes at the end of each measurement, "server/baseline"
                "server_processes": {
                    r: f"{_processes(mine[r])}/{_processes(base[r])}" for r in runs
                },
            }
            for field in ("rate", "server_cpu_us", "client_cpu_us"):
                ratios = {
                    r: float(mine[r][field]) / float(base[r][field])
                    for r in runs
                    if mine[r].get(field) and base[r].get(field)
                }
                if ratios:
                    entry[field] = {"by_run": ratios, **spread(list(ratios.values()))}
            out.append(entry)
    return out


def _processes(sample: dict[str, Any]) -> str:
    return str(sample.get("server_processes", "?"))


_PAIR_FIELDS = {
    "rate": "sessions/s",
    "server_cpu_us": "server CPU µs/session",
    "client_cpu_us": "client CPU µs/session",
}


def pairs_text(results: Results, kinds: Sequence[Kind], plan: Plan) -> str:
    """The pairs as a table of ratios run by run ("" when the run has no pair)."""
    entries = pairs(results, kinds, plan)
    if not entries:
        return ""
    labels = {k.name: k.label for k in kinds}
    runs = list(range(1, plan.runs + 1))
    header = "ratio (server / its baseline, same run)"
    rows = [[header, *(f"run {r}" for r in runs), "median (min-max)"]]
    for e in entries:
        for field, what in _PAIR_FIELDS.items():
            if field not in e:
                continue
            by_run = e[field]["by_run"]
            failed = " !" if e["failed_runs"] else ""
            c = e[field]
            rows.append(
                [
                    f"{labels[e['server']]} / {labels[e['baseline']]}, {e['point']}: {what}",
                    *(f"{by_run[r]:.3f}" if r in by_run else "-" for r in runs),
                    f"{c['median']:.3f} ({c['min']:.3f}-{c['max']:.3f}){failed}",
                ]
            )
        processes = e["server_processes"]
        rows.append(
            [
                f"{labels[e['server']]} / {labels[e['baseline']]}, {e['point']}: processes",
                *(processes.get(r, "-") for r in runs),
                "",
            ]
        )
    return align(rows)


@dataclass(frozen=True)
class Target:
    """A performance goal: the ratio of two medians (or their difference, or one
    median alone) and the bound it must meet."""

    label: str
    key: str
    field: str
    at_least: bool
    bound: float
    numerator: str = "ours"
    denominator: str = "stunnel"
    compare: str = "ratio"  # or "difference", or "value" (the numerator alone)


def targets(plan: Plan) -> tuple[Target, ...]:
    """The project's performance goals on a 2-core machine (ours / stunnel unless named)."""
    v = plan.versions[0]
    c = main_concurrency(plan)
    full, resumed = point_key(False, c, v), point_key(True, c, v)
    return (
        Target("full handshakes/s, c=16, TLS 1.2", point_key(False, 16, "1.2"), "rate", True, 2.0),
        Target("full handshakes/s, c=16, TLS 1.3", point_key(False, 16, "1.3"), "rate", True, 2.2),
        Target(f"p99 latency, c=64, TLS {v}", point_key(False, 64, v), "p99_ms", False, 0.3),
        Target("after load and quiet: processes", "quiet", "processes", False, 1, compare="value"),
        Target(
            "after load and quiet: PSS vs N=1 (MiB)",
            "quiet", "pss_mib", False, 1.0, "ours", "ours-1", "difference",
        ),
        Target(
            f"N=2 workers: server CPU/session, c={c}",
            full, "server_cpu_us", False, 1.05, "ours-2", "ours-1",
        ),
        Target(f"N=2 workers: sessions/s, c={c}", full, "rate", True, 1.0, "ours-2", "ours-1"),
        Target(f"resumed sessions/s, c={c}", resumed, "rate", True, 1.5),
        Target("one session MB/s down", "down", "mbps", True, 1.2),
        Target("one session MB/s up", "up", "mbps", True, 1.0),
        Target("one session MB/s echo", "echo", "mbps", True, 1.4),
        Target("memory per idle session", "idle", "kib_per_session", False, 0.6),
        Target(
            "Nagle on (-d) vs -D, sessions/s c=1",
            point_key(False, 1, v), "rate", True, 0.9, "ours", "ours-D",
        ),
        *(
            Target(
                f"ALPN list set vs none: full handshakes/s, c={c}, TLS {version}",
                point_key(False, c, version), "rate", True, 0.97, "ours-alpn", "ours-1",
            )
            for version in plan.versions
        ),
        *(
            Target(
                f"{CERT_RULES:,} certificate rules vs none: mTLS handshakes/s, c={c}, "
                f"TLS {version}",
                point_key(False, c, version), "rate", True, 0.95, "ours-mtls-rules", "ours-mtls",
            )
            for version in plan.versions
        ),
    )  # fmt: skip


def _median(results: Results, key: str, server: str, field: str) -> float | None:
    values = [float(s[field]) for s in results.samples.get(key, {}).get(server, []) if field in s]
    return statistics.median(values) if values else None


def verdicts(results: Results, plan: Plan) -> list[dict[str, Any]]:
    """Each target's measured value, and whether it is met (by how much not)."""
    out: list[dict[str, Any]] = []
    ran = {server for by_server in results.samples.values() for server in by_server}
    for t in targets(plan):
        if t.numerator not in ran or (t.compare != "value" and t.denominator not in ran):
            continue  # a server this run did not start
        if t.key not in results.samples:
            continue  # a measurement this run did not make (--only)
        num = _median(results, t.key, t.numerator, t.field)
        den = _median(results, t.key, t.denominator, t.field)
        shown = {"ratio": f"{t.numerator}/{t.denominator}", "value": t.numerator}
        unit = {"ratio": "x", "difference": "", "value": ""}[t.compare]
        entry: dict[str, Any] = {
            "target": t.label,
            "ratio": shown.get(t.compare, f"{t.numerator}-{t.denominator}"),
            "bound": f"{'≥' if t.at_least else '≤'} {t.bound:.2f}{unit}",
            "measured": None,
            "unit": unit,
            "verdict": "not measured",
        }
        measured = None
        if t.compare == "value":
            measured = num
        elif num is not None and den is not None and (den or t.compare == "difference"):
            measured = num / den if t.compare == "ratio" else num - den
        if measured is not None:
            met = measured >= t.bound if t.at_least else measured <= t.bound
            entry["measured"] = measured
            if met:
                entry["verdict"] = "met"
            elif t.compare != "ratio":
                entry["verdict"] = f"MISSED by {abs(measured - t.bound):.2f}{unit}"
            elif t.at_least:
                entry["verdict"] = f"MISSED by {1 - measured / t.bound:.0%}"
            else:
                entry["verdict"] = f"MISSED by {measured / t.bound - 1:.0%}"
        out.append(entry)
    return out


def targets_text(entries: Sequence[dict[str, Any]]) -> str:
    """The targets as a second table, beside the main one."""
    rows = [["target", "ratio", "goal", "measured", ""]]
    for e in entries:
        measured = "-" if e["measured"] is None else f"{e['measured']:.2f}{e['unit']}"
        rows.append([e["target"], e["ratio"], e["bound"], measured, e["verdict"]])
    return align(rows)
