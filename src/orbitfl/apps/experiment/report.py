"""The experiment table: one record per simulated run, as JSON and CSV, plus the plots.

Bytes, all counted on the air by the simulator (frames cut by the end of a window included):
``uplink_bytes`` is what the satellites sent for their updates (UPDATE frames and their chunks);
``uplink_total_bytes`` is everything they sent, control traffic too (HELLO, heartbeats, chunk
acks, NACKs); ``control_uplink_bytes`` the difference, itemised by frame type in ``uplink_by_type``.

Every ratio is given twice over, each without and with the control traffic:

- ``x_vs_raw`` / ``x_vs_raw_all``: what the run's accepted updates weigh as raw float32
  (``float32_bytes``) over its uplink — the compression, free of any baseline's losses;
- ``x_vs_fp32_run`` / ``x_vs_fp32_run_all``: the float32 baseline run's actual uplink (same data
  set, split and seed) over this run's — the system effect, which also counts the baseline's frames
  lost when windows close.

Accuracy is ``accuracy_last5``, the mean of the last 5 evaluations (one evaluation moves by a point
or more on a small test set), and the gap to the baseline ``accuracy_gap_points`` is taken on it;
the summary gives the mean over seeds with its spread (min, max, std). ``ratio_vs_float32`` is kept
for old readers: ``x_vs_fp32_run`` when there is a baseline, else ``x_vs_raw``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orbitfl.apps.sim.runner import SimResult, iter_rows

LAST_N = 5  # evaluations averaged for the accuracy that decides a gap
RATIOS = ("x_vs_raw", "x_vs_raw_all", "x_vs_fp32_run", "x_vs_fp32_run_all")
COLUMNS = (
    "name",
    "codec",
    "strategy",
    "dataset",
    "partition",
    "seed",
    "accuracy_last5",
    "final_accuracy",
    "accuracy_gap_points",
    "final_gap_points",
    "uplink_bytes",
    "uplink_total_bytes",
    "control_uplink_bytes",
    "float32_bytes",
    "downlink_bytes",
    *RATIOS,
    "ratio_vs_float32",
    "sim_time_to_target",
    "codec_ratio",
    "rounds",
    "accepted_updates",
    "frames_lost",
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
    "accuracy_last5_mean",
    "accuracy_last5_min",
    "accuracy_last5_max",
    "accuracy_last5_std",
    "accuracy_gap_points",
    "accuracy_gap_points_min",
    "accuracy_gap_points_max",
    "final_accuracy_mean",
    "final_accuracy_std",
    "uplink_bytes_mean",
    "uplink_total_bytes_mean",
    *RATIOS,
    "x_vs_raw_all_min",
    "ratio_vs_float32",
    "sim_time_to_target_mean_h",
    "reached_target",
    "backhaul_bytes_mean",
)


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def last_mean(series: Sequence[Mapping[str, Any]], n: int = LAST_N) -> float | None:
    """Mean accuracy over the last ``n`` evaluations of a run (fewer if it had fewer)."""
    acc = [float(row["accuracy"]) for row in series if row.get("accuracy") is not None]
    return sum(acc[-n:]) / len(acc[-n:]) if acc else None


def run_record(res: SimResult, labels: Mapping[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = dict(labels)
    series = list(iter_rows(res.rounds))
    rec.update(
        final_accuracy=res.final_accuracy,
        accuracy_last5=last_mean(series),
        uplink_bytes=res.uplink_update_bytes,
        uplink_total_bytes=res.uplink_bytes,
        control_uplink_bytes=res.uplink_bytes - res.uplink_update_bytes,
        uplink_by_type=dict(res.uplink_by_type),
        downlink_bytes=res.downlink_bytes,
        float32_bytes=res.float32_bytes,
        x_vs_raw=_div(res.float32_bytes, res.uplink_update_bytes),
        x_vs_raw_all=_div(res.float32_bytes, res.uplink_bytes),
        x_vs_fp32_run=None,
        x_vs_fp32_run_all=None,
        codec_ratio=res.ratio_vs_float32,
        ratio_vs_float32=res.ratio_vs_float32,
        accuracy_gap_points=None,
        final_gap_points=None,
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
        series=series,
    )
    return rec


def compare_to_baseline(records: list[dict[str, Any]], baseline: str) -> None:
    """Fill the system-effect ratios and the accuracy gaps against the run named ``baseline`` with
    the same data set, split and seed."""
    base = {(r["dataset"], r["partition"], r["seed"]): r for r in records if r["name"] == baseline}
    for r in records:
        b = base.get((r["dataset"], r["partition"], r["seed"]))
        if b is None:
            continue
        r["x_vs_fp32_run"] = _div(b["uplink_bytes"], r["uplink_bytes"])
        r["x_vs_fp32_run_all"] = _div(b.get("uplink_total_bytes", 0), r.get("uplink_total_bytes", 0))
        if r["x_vs_fp32_run"] is not None:
            r["ratio_vs_float32"] = r["x_vs_fp32_run"]
        if r.get("accuracy_last5") is not None and b.get("accuracy_last5") is not None:
            r["accuracy_gap_points"] = 100.0 * (b["accuracy_last5"] - r["accuracy_last5"])
        if r["final_accuracy"] is not None and b["final_accuracy"] is not None:
            r["final_gap_points"] = 100.0 * (b["final_accuracy"] - r["final_accuracy"])


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _std(xs: Sequence[float]) -> float | None:
    m = _mean(xs)
    return None if m is None else math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run name, data set and split: means over seeds, with the spread of the last-5
    accuracy and of the gap; ratios are means of the per-seed ratios."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["name"], r["dataset"], r["partition"]), []).append(r)

    def vals(rs: Sequence[Mapping[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in rs if r.get(key) is not None]

    out = []
    for (name, ds, part), rs in groups.items():
        last5, gaps, final = (
            vals(rs, "accuracy_last5"),
            vals(rs, "accuracy_gap_points"),
            vals(rs, "final_accuracy"),
        )
        ttt = [t / 3600.0 for t in vals(rs, "sim_time_to_target")]
        row: dict[str, Any] = {
            "name": name,
            "dataset": ds,
            "partition": part,
            "seeds": len(rs),
            "accuracy_last5_mean": _mean(last5),
            "accuracy_last5_min": min(last5, default=None),
            "accuracy_last5_max": max(last5, default=None),
            "accuracy_last5_std": _std(last5),
            "accuracy_gap_points": _mean(gaps),
            "accuracy_gap_points_min": min(gaps, default=None),
            "accuracy_gap_points_max": max(gaps, default=None),
            "final_accuracy_mean": _mean(final),
            "final_accuracy_std": _std(final),
            "uplink_bytes_mean": _mean(vals(rs, "uplink_bytes")),
            "uplink_total_bytes_mean": _mean(vals(rs, "uplink_total_bytes")),
            "x_vs_raw_all_min": min(vals(rs, "x_vs_raw_all"), default=None),
            "ratio_vs_float32": _mean(vals(rs, "ratio_vs_float32")),
            "sim_time_to_target_mean_h": _mean(ttt),
            "reached_target": f"{len(ttt)}/{len(rs)}",
            "backhaul_bytes_mean": _mean(
                [float(r.get("backhaul_up_bytes", 0) + r.get("backhaul_down_bytes", 0)) for r in rs]
            ),
        }
        for key in RATIOS:
            row[key] = _mean(vals(rs, key))
        out.append(row)
    return out


def frontier(
    summary: Sequence[Mapping[str, Any]], max_gap: float = 1.0, baseline: str | None = None
) -> dict[tuple[str, str], Mapping[str, Any]]:
    """Per data set and split, the row other than the baseline with the largest ``x_vs_raw_all``
    (control included) among those whose mean last-5 gap is at most ``max_gap`` points."""
    best: dict[tuple[str, str], Mapping[str, Any]] = {}
    for s in summary:
        gap, x = s.get("accuracy_gap_points"), s.get("x_vs_raw_all")
        if gap is None or x is None or gap > max_gap or s["name"] == baseline:
            continue
        key = (str(s["dataset"]), str(s["partition"]))
        if key not in best or x > best[key]["x_vs_raw_all"]:
            best[key] = s
    return best


def markdown(summary: Sequence[Mapping[str, Any]], baseline: str | None = None) -> str:
    """The summary as a Markdown table (over seeds: mean, and min..max), for docs and the terminal,
    with the best ratio within 1 point under it; a backhaul column when a run had a station network."""
    network = any(s.get("backhaul_bytes_mean") for s in summary)
    head: tuple[str, ...] = (
        "run",
        "data",
        "seeds",
        "acc last-5 (min..max)",
        "gap pts last-5 (min..max)",
        "x raw fp32: upd / +ctl",
        "x fp32 run: upd / +ctl",
        "uplink B: upd / +ctl",
        "t to target (h)",
    ) + (("backhaul B",) if network else ())
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for s in summary:
        lines.append(
            f"| {s['name']} | {s['dataset']}/{s['partition']} | {s['seeds']} | "
            f"{f(s['accuracy_last5_mean'], '.4f')} ({f(s['accuracy_last5_min'], '.4f')}.."
            f"{f(s['accuracy_last5_max'], '.4f')}) | "
            f"{f(s['accuracy_gap_points'], '+.2f')} ({f(s['accuracy_gap_points_min'], '+.2f')}.."
            f"{f(s['accuracy_gap_points_max'], '+.2f')}) | "
            f"{f(s['x_vs_raw'], '.1f')} / {f(s['x_vs_raw_all'], '.1f')} | "
            f"{f(s['x_vs_fp32_run'], '.1f')} / {f(s['x_vs_fp32_run_all'], '.1f')} | "
            f"{f(s['uplink_bytes_mean'], ',.0f')} / {f(s['uplink_total_bytes_mean'], ',.0f')} | "
            f"{f(s['sim_time_to_target_mean_h'], '.1f')} ({s['reached_target']}) |"
            + (f" {f(s.get('backhaul_bytes_mean'), ',.0f')} |" if network else "")
        )
    best = frontier(summary, baseline=baseline)
    compared = {
        (str(s["dataset"]), str(s["partition"])) for s in summary if s["accuracy_gap_points"] is not None
    }
    for ds, part in sorted(compared - set(best)):
        lines.append(
            f"\nno recipe within 1 point (last-5 mean) of {baseline or 'the baseline'} on {ds}/{part}"
        )
    for (ds, part), s in sorted(best.items()):
        lines.append(
            f"\nbest within 1 point (last-5 mean) on {ds}/{part}: **{s['name']}**, "
            f"{s['x_vs_raw_all']:.1f}x less uplink than its accepted updates as raw float32, control "
            f"traffic included ({f(s['x_vs_raw'], '.1f')}x updates only; "
            f"{f(s['x_vs_fp32_run_all'], '.1f')}x the float32 run's air bytes), "
            f"gap {s['accuracy_gap_points']:+.2f} points"
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
    paths[4].write_text(markdown(summary, baseline=(extra or {}).get("baseline")) + "\n")
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
        paths.extend(plot(records, out, baseline=(extra or {}).get("baseline")))
    return paths


# Ten well-separated colours (Okabe-Ito, then tab10's) and as many marker shapes: a recipe is its
# colour *and* its marker, so lines stay apart in greyscale and for colour-blind readers.
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#8C564B",
    "#7F7F7F",
    "#BCBD22",
    "#9467BD",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
BASELINE_STYLE: dict[str, Any] = {"color": "black", "ls": "--", "lw": 2.0, "marker": None}


def styles(names: Sequence[str], baseline: str | None) -> dict[str, dict[str, Any]]:
    """Line style per run name: the baseline black dashed, every other its own colour and marker
    (colour and marker cycle with coprime periods, so no two of the first 60 names share both)."""
    out: dict[str, dict[str, Any]] = {}
    i = 0
    for n in names:
        if n == baseline:
            out[n] = dict(BASELINE_STYLE)
            continue
        out[n] = {
            "color": PALETTE[i % len(PALETTE)],
            "ls": "-",
            "lw": 1.3,
            "marker": MARKERS[i % len(MARKERS)],
        }
        i += 1
    return out


def plot(records: Sequence[Mapping[str, Any]], out: Path, baseline: str | None = None) -> list[Path]:
    """Per data set and split: accuracy against cumulative uplink bytes (control included), and
    against simulated time; one line per run (seeds share their recipe's style), the baseline
    black dashed, one legend for both panels outside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["partition"]), []).append(r)
    paths: list[Path] = []
    for (ds, part), rs in groups.items():
        names = sorted({r["name"] for r in rs}, key=lambda n: (n != baseline, n))
        style = styles(names, baseline)
        fig, axes = plt.subplots(1, 2, figsize=(14, 5.2))
        for r in rs:
            s = [row for row in r["series"] if row["accuracy"] is not None]
            if not s:
                continue
            st = style[r["name"]]
            every = max(1, len(s) // 8)
            kw = dict(color=st["color"], ls=st["ls"], lw=st["lw"], marker=st["marker"], ms=5, markevery=every)
            acc = [row["accuracy"] for row in s]
            axes[0].plot(
                [max(1, row.get("uplink_bytes", row["uplink_update_bytes"])) for row in s], acc, **kw
            )
            axes[1].plot([row["time_s"] / 3600.0 for row in s], acc, **kw)
        axes[0].set_xscale("log")
        axes[0].set_xlabel("cumulative uplink bytes, control traffic included (log)")
        axes[1].set_xlabel("simulated time (h)")
        metric = "test accuracy" if ds != "hyperspectral" else "target detection ROC AUC"
        for ax in axes:
            ax.set_ylabel(f"{metric} of the global model")
            ax.grid(alpha=0.3)
        handles = [
            Line2D(
                [],
                [],
                color=style[n]["color"],
                ls=style[n]["ls"],
                lw=style[n]["lw"],
                marker=style[n]["marker"],
                ms=6,
            )
            for n in names
        ]
        labels = [f"{n} (baseline)" if n == baseline else n for n in names]
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.80, 0.5), fontsize=8, frameon=False)
        fig.suptitle(f"orbitfl experiment: {ds} ({part}); {len({r['seed'] for r in rs})} seed(s) per recipe")
        fig.tight_layout(rect=(0, 0, 0.80, 1))
        p = out / f"accuracy_{Path(str(ds)).name}_{part}.png"  # your data's path: its file name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
