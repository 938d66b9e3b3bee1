"""The experiment table: one record per simulated run, as JSON and CSV, plus the plots.

``uplink_bytes`` counts what the satellites put on the air for their updates (UPDATE frames and
their chunks, including bytes of frames cut by the end of a window); control traffic (HELLO,
heartbeats, chunk acks) is ``uplink_total_bytes``. ``ratio_vs_float32`` is the uplink of the float32
FedAvg run of the same data set, split and seed divided by this run's (when the sweep has one), else
what the accepted updates weigh as float32 divided by this run's uplink.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orbitfl.apps.sim.runner import SimResult, iter_rows

COLUMNS = (
    "name",
    "codec",
    "strategy",
    "dataset",
    "partition",
    "seed",
    "final_accuracy",
    "uplink_bytes",
    "downlink_bytes",
    "ratio_vs_float32",
    "sim_time_to_target",
    "accuracy_gap_points",
    "codec_ratio",
    "uplink_total_bytes",
    "rounds",
    "accepted_updates",
    "sim_hours",
    "wall_seconds",
    "topology",
    "backhaul_up_bytes",
    "backhaul_down_bytes",
    "backhaul_frames_lost",
)
SUMMARY_COLUMNS = (
    "name",
    "dataset",
    "partition",
    "seeds",
    "final_accuracy_mean",
    "final_accuracy_std",
    "accuracy_gap_points",
    "uplink_bytes_mean",
    "ratio_vs_float32",
    "sim_time_to_target_mean_h",
    "reached_target",
    "backhaul_bytes_mean",
)


def run_record(res: SimResult, labels: Mapping[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = dict(labels)
    rec.update(
        final_accuracy=res.final_accuracy,
        uplink_bytes=res.uplink_update_bytes,
        downlink_bytes=res.downlink_bytes,
        uplink_total_bytes=res.uplink_bytes,
        float32_bytes=res.float32_bytes,
        codec_ratio=res.ratio_vs_float32,
        ratio_vs_float32=res.ratio_vs_float32,
        accuracy_gap_points=None,
        sim_time_to_target=res.time_to_target,
        rounds=len(res.rounds),
        accepted_updates=res.accepted_updates,
        duplicates_seen=res.duplicates_seen,
        frames_lost=res.frames_lost,
        sim_hours=round(res.sim_seconds / 3600.0, 3),
        wall_seconds=round(res.wall_seconds, 2),
        windows=res.windows,
        n_params=res.n_params,
        refused=res.refused,
        topology=res.config.get("topology", "single"),
        backhaul_up_bytes=res.backhaul_up_bytes,
        backhaul_down_bytes=res.backhaul_down_bytes,
        backhaul_frames_lost=res.backhaul_frames_lost,
        station_stats=res.station_stats,
        audit=res.audit,
        series=list(iter_rows(res.rounds)),
    )
    return rec


def compare_to_baseline(records: list[dict[str, Any]], baseline: str) -> None:
    """Fill ratio_vs_float32 and accuracy_gap_points against the run named ``baseline`` with the
    same data set, split and seed."""
    base = {(r["dataset"], r["partition"], r["seed"]): r for r in records if r["name"] == baseline}
    for r in records:
        b = base.get((r["dataset"], r["partition"], r["seed"]))
        if b is None:
            continue
        if r["uplink_bytes"]:
            r["ratio_vs_float32"] = b["uplink_bytes"] / r["uplink_bytes"]
        if r["final_accuracy"] is not None and b["final_accuracy"] is not None:
            r["accuracy_gap_points"] = 100.0 * (b["final_accuracy"] - r["final_accuracy"])


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["name"], r["dataset"], r["partition"]), []).append(r)

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    out = []
    for (name, ds, part), rs in groups.items():
        acc = [float(r["final_accuracy"]) for r in rs if r["final_accuracy"] is not None]
        m = mean(acc)
        std = math.sqrt(sum((a - m) ** 2 for a in acc) / len(acc)) if acc and m is not None else None
        ttt = [float(r["sim_time_to_target"]) / 3600.0 for r in rs if r["sim_time_to_target"] is not None]
        gaps = [float(r["accuracy_gap_points"]) for r in rs if r["accuracy_gap_points"] is not None]
        ratios = [float(r["ratio_vs_float32"]) for r in rs if r["ratio_vs_float32"] is not None]
        out.append(
            {
                "name": name,
                "dataset": ds,
                "partition": part,
                "seeds": len(rs),
                "final_accuracy_mean": m,
                "final_accuracy_std": std,
                "accuracy_gap_points": mean(gaps),
                "uplink_bytes_mean": mean([float(r["uplink_bytes"]) for r in rs]),
                "ratio_vs_float32": mean(ratios),
                "sim_time_to_target_mean_h": mean(ttt),
                "reached_target": f"{len(ttt)}/{len(rs)}",
                "backhaul_bytes_mean": mean(
                    [float(r.get("backhaul_up_bytes", 0) + r.get("backhaul_down_bytes", 0)) for r in rs]
                ),
            }
        )
    return out


def markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a Markdown table (means over seeds), for docs and the terminal; with a
    backhaul column when a run had a station network."""
    network = any(s.get("backhaul_bytes_mean") for s in summary)
    head: tuple[str, ...] = (
        "run",
        "data",
        "seeds",
        "final acc",
        "gap (pts)",
        "uplink B",
        "x less than fp32",
        "t to target (h)",
    ) + (("backhaul B",) if network else ())
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for s in summary:
        lines.append(
            f"| {s['name']} | {s['dataset']}/{s['partition']} | {s['seeds']} | "
            f"{f(s['final_accuracy_mean'], '.4f')} ± {f(s['final_accuracy_std'], '.4f')} | "
            f"{f(s['accuracy_gap_points'], '+.2f')} | {f(s['uplink_bytes_mean'], ',.0f')} | "
            f"{f(s['ratio_vs_float32'], '.1f')} | {f(s['sim_time_to_target_mean_h'], '.1f')} "
            f"({s['reached_target']}) |"
            + (f" {f(s.get('backhaul_bytes_mean'), ',.0f')} |" if network else "")
        )
    return "\n".join(lines)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def write_report(
    records: list[dict[str, Any]], out: Path, *, extra: Mapping[str, Any] | None = None, plots: bool = True
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    paths = [
        out / "results.json",
        out / "results.csv",
        out / "summary.csv",
        out / "rounds.csv",
        out / "summary.md",
    ]
    paths[0].write_text(json.dumps({**(extra or {}), "summary": summary, "runs": records}, indent=1))
    paths[4].write_text(markdown(summary) + "\n")
    with paths[1].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in records:
            w.writerow([_fmt(r.get(c)) for c in COLUMNS])
    with paths[2].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SUMMARY_COLUMNS)
        for s in summary:
            w.writerow([_fmt(s.get(c)) for c in SUMMARY_COLUMNS])
    series_cols = (
        "round",
        "version",
        "time_s",
        "accuracy",
        "updates",
        "uplink_update_bytes",
        "uplink_bytes",
        "downlink_bytes",
        "float32_bytes",
    )
    with paths[3].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("name", "dataset", "partition", "seed", *series_cols))
        for r in records:
            for row in r["series"]:
                w.writerow(
                    [r["name"], r["dataset"], r["partition"], r["seed"], *(_fmt(row[c]) for c in series_cols)]
                )
    if plots:
        paths.extend(plot(records, out))
    return paths


def plot(records: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    """Per data set and split: accuracy against cumulative uplink bytes, and against simulated
    time; one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["partition"]), []).append(r)
    paths: list[Path] = []
    for (ds, part), rs in groups.items():
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        names = sorted({r["name"] for r in rs})
        colors = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}
        labelled: set[str] = set()
        for r in rs:
            s = [row for row in r["series"] if row["accuracy"] is not None]
            if not s:
                continue
            label = None if r["name"] in labelled else r["name"]
            labelled.add(r["name"])
            acc = [row["accuracy"] for row in s]
            axes[0].plot(
                [max(1, row["uplink_update_bytes"]) for row in s],
                acc,
                color=colors[r["name"]],
                lw=1.2,
                label=label,
            )
            axes[1].plot(
                [row["time_s"] / 3600.0 for row in s], acc, color=colors[r["name"]], lw=1.2, label=label
            )
        axes[0].set_xscale("log")
        axes[0].set_xlabel("cumulative uplink bytes of updates (log)")
        axes[1].set_xlabel("simulated time (h)")
        metric = "test accuracy" if ds != "hyperspectral" else "target detection ROC AUC"
        for ax in axes:
            ax.set_ylabel(f"{metric} of the global model")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, loc="lower right")
        fig.suptitle(f"orbitfl experiment: {ds} ({part})")
        fig.tight_layout()
        p = out / f"accuracy_{Path(str(ds)).name}_{part}.png"  # your data's path: its file name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
