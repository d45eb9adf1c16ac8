"""Writing out an evaluation (the results dict of `apd.evaluation.run_evaluation`).

In the output folder: results.md (one method x metric table per measurement set, with notes), results.csv
(one line per set and row), results.json (rows, config, settings, seeds, package versions, notes), and per
measurement set <set>_signals.npz (truth, shown y, every scored estimate, APD samples and std) and
<set>_figure.png (rows truth, y, APD samples, APD mean, std, each baseline; images as a grid, mesh signals as
renders, sphere signals as lat-lon maps).
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np

from apd.eval.figures import save_dataset_figure

DISPLAY_NAMES = {
    "apd": "APD",
    "dps": "DPS",
    "mcg": "MCG",
    "pigdm": "PiGDM",
    "cpigdm": "C-PiGDM",
    "ddrm": "DDRM",
    "reddiff": "RED-diff",
    "noise2score": "Noise2Score",
    "flow": "per-measurement flow",
}
COLUMNS = (  # (row key, markdown header, number format)
    ("psnr", "PSNR ↑", "{:.2f}"),
    ("ssim", "SSIM ↑", "{:.3f}"),
    ("mse", "MSE ↓", "{:.4f}"),
    ("lpips", "LPIPS ↓", "{:.3f}"),
    ("std", "std", "{:.3f}"),
    ("cov50", "cov 50%", "{:.3f}"),
    ("cov90", "cov 90%", "{:.3f}"),
    ("cov95", "cov 95%", "{:.3f}"),
    ("cal_err", "cal. err ↓", "{:.3f}"),
    ("nfe", "NFE", "{:d}"),
    ("time_s", "time / meas. (s)", "{:.3g}"),
    ("time_128_s", "time / 128 (s)", "{:.3g}"),
)
LEGEND = (
    "x1: the first sample; xK: the mean of K samples. PSNR, SSIM, MSE, LPIPS: means over measurements of the "
    "estimate clipped to [0, 1]. std: posterior std, mean over entries. cov p%: fraction of truth entries inside "
    "the central p% interval of the samples (p/100 when calibrated); cal. err: mean |coverage - level| over "
    "levels 5%, ..., 95%. NFE: sequential network evaluations, each batched over all samples. Times: wall "
    "seconds after compilation, per measurement (all measurements batched) and for 128 samples of one measurement."
)
FIGURE_COLUMNS = 8  # measurements shown in a figure
IN_MEMORY = ("dataset", "signals")  # set entries that stay out of results.json


def method_label(row: dict) -> str:
    return f"{DISPLAY_NAMES.get(row['method'], row['method'])} (x{row['samples']})"


def present_columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The COLUMNS that at least one row has, in COLUMNS order."""
    return [col for col in COLUMNS if any(col[0] in row for row in rows)]


def _cell(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def markdown_table(rows: list[dict]) -> str:
    """A markdown table, one line per row: method (xK), then the present metric columns."""
    columns = present_columns(rows)
    lines = [
        "| " + " | ".join(["method"] + [header for _, header, _ in columns]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for row in rows:
        cells = [method_label(row)] + [_cell(row.get(key), fmt) for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_markdown(results: dict) -> str:
    """results.md: a header with the task, one table per measurement set, the notes and the legend."""
    settings = results["settings"]
    config = results["config"]
    lines = ["# Evaluation", ""]
    if results.get("command"):
        lines += [f"`{results['command']}`", ""]
    lines += [
        f"workdir `{results['workdir']}`; data {config['data']['name']} ({settings['split']} split); operator {config.get('operator')}; "
        f"APD samples K = {settings['num_samples']}; baseline samples per measurement "
        f"{settings['baseline_samples']}; device {results['versions']['device']}.",
        "",
    ]
    for name, entry in results["sets"].items():
        lines += [f"## {name}: {entry['num_measurements']} measurements of {entry['dataset'].name}", ""]
        lines += [markdown_table(entry["rows"]) if entry["rows"] else "(no method ran)", ""]
    if results.get("generalization_gap"):
        lines += ["Generalization gap of APD (PSNR on the first training measurements, which the flow was trained on, "
                  "minus PSNR on the held-out ones above):", ""]
        lines += [f"- {label}: train {g['train_psnr']:.2f} dB, held-out {g['held_out_psnr']:.2f} dB, gap {g['gap_db']:+.2f} dB"
                  for label, g in results["generalization_gap"].items()] + [""]
    if results["notes"]:
        lines += ["Notes:", ""] + [f"- {note}" for note in results["notes"]] + [""]
    lines += [LEGEND, ""]
    return "\n".join(lines)


def write_csv(results: dict, path: str) -> str:
    """One line per (set, row): set, method, samples and every metric column any row has."""
    all_rows = [row for entry in results["sets"].values() for row in entry["rows"]]
    fields = ["set", "method", "samples"] + [key for key, _, _ in present_columns(all_rows)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        for name, entry in results["sets"].items():
            for row in entry["rows"]:
                writer.writerow({"set": name, **row})
    return path


def to_json(results: dict) -> dict:
    """results without the in-memory entries (datasets and arrays); sets name their data set instead."""
    out = {key: value for key, value in results.items() if key != "sets"}
    out["sets"] = {}
    for name, entry in results["sets"].items():
        kept = {key: value for key, value in entry.items() if key not in IN_MEMORY}
        out["sets"][name] = {"dataset": entry["dataset"].name, **kept}
    return out


def write_json(results: dict, path: str) -> str:
    with open(path, "w") as f:
        json.dump(to_json(results), f, indent=2, default=str)
    return path


def figure_rows(entry: dict) -> list[tuple[str, np.ndarray]]:
    """(label, (n, *S) in [0, 1]) rows of a set's figure, n <= FIGURE_COLUMNS measurements."""
    signals = entry["signals"]
    counts = {}
    for row in entry["rows"]:
        counts[row["method"]] = max(counts.get(row["method"], 1), row["samples"])
    rows = [("truth", signals["truth"])]
    if "y" in signals:
        rows.append(("y", signals["y"]))
    for method, k in counts.items():
        label = DISPLAY_NAMES.get(method, method)
        if f"{method}_samples" in signals:
            samples = signals[f"{method}_samples"]
            rows += [(f"{label} sample {i + 1}", np.clip(samples[:, i], 0, 1)) for i in range(samples.shape[1])]
        else:
            rows.append((label, signals[f"{method}_x1"]))
        if k > 1:
            rows.append((f"{label} mean of {k}", signals[f"{method}_x{k}"]))
            if f"{method}_samples" in signals:
                rows.append(("std", signals[f"{method}_std"]))
    return [(label, np.asarray(values[:FIGURE_COLUMNS])) for label, values in rows]


def write_outputs(results: dict, out_dir: str) -> dict[str, str]:
    """Write every file of the evaluation into out_dir; returns {file name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(format_markdown(results))
    paths["results.md"] = os.path.join(out_dir, "results.md")
    paths["results.csv"] = write_csv(results, os.path.join(out_dir, "results.csv"))
    paths["results.json"] = write_json(results, os.path.join(out_dir, "results.json"))
    for name, entry in results["sets"].items():
        npz = os.path.join(out_dir, f"{name}_signals.npz")
        np.savez_compressed(npz, **entry["signals"])
        paths[os.path.basename(npz)] = npz
        png = save_dataset_figure(os.path.join(out_dir, f"{name}_figure.png"), entry["dataset"], figure_rows(entry))
        paths[os.path.basename(png)] = png
    return paths
