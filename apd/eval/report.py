"""Writing out an evaluation (the results dict of `apd.evaluation.run_evaluation`).

In the output folder: results.md (one method x metric table per measurement set, with notes), results.csv
(one line per set and row), results.json (rows, config, settings, seeds, package versions, notes), and per
measurement set <set>_signals.npz (truth, shown y, every scored estimate, APD samples and std),
<set>_measurements.npz (the measurements y and masks as used, a file `sample.py` reads) and
<set>_figure.png (rows truth, y, APD samples, APD mean, std, each baseline; images as a grid, mesh signals as
renders, sphere signals as lat-lon maps) and <set>_calibration.png (coverage against level per method).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile

import numpy as np

from apd.eval.figures import save_calibration_curves, save_dataset_figure
from apd.measurement_files import write_measurement_file

DISPLAY_NAMES = {
    "apd": "APD",
    "apd_start": "APD start",
    "apd_refined": "APD refined",
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
    ("cov90_observed", "cov 90% obs.", "{:.3f}"),
    ("cov90_hidden", "cov 90% hidden", "{:.3f}"),
    ("cal_err_observed", "cal. err obs.", "{:.3f}"),
    ("cal_err_hidden", "cal. err hidden", "{:.3f}"),
    ("nfe", "NFE", "{:d}"),
    ("time_s", "time / meas. (s)", "{:.3g}"),
    ("time_128_s", "time / 128 (s)", "{:.3g}"),
)
LEGEND = (
    "x1: the first sample; xK: the mean of K samples. APD start: the flow before training (its output fit only). "
    "APD refined: the trained flow refined on each measurement by a few steps of its objective before sampling (its NFE: "
    "the refinement's score evaluations). PSNR, SSIM, MSE, LPIPS: means over measurements of the "
    "estimate clipped to [0, 1], with a 95% bootstrap interval over measurements in brackets. std: posterior std, mean over entries. cov p%: fraction of truth entries inside "
    "the central p% interval of the samples (p/100 when calibrated); cal. err: mean |coverage - level| over "
    "levels 5%, ..., 95%; obs. / hidden: the same over observed / hidden entries only. NFE: sequential network evaluations, each batched over all samples. Times: wall "
    "seconds after compilation, per measurement (all measurements batched) and for 128 samples of one measurement."
)
FIGURE_COLUMNS = 8  # measurements shown in a figure
IN_MEMORY = ("dataset", "signals", "measurements")  # set entries that stay out of results.json


def method_label(row: dict) -> str:
    """'APD (x1)'; a refined row also names its steps: 'APD refined (100 steps, x1)'."""
    steps = f"{row['refine_steps']} steps, " if "refine_steps" in row else ""
    return f"{DISPLAY_NAMES.get(row['method'], row['method'])} ({steps}x{row['samples']})"


def present_columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The COLUMNS that at least one row has, in COLUMNS order."""
    return [col for col in COLUMNS if any(col[0] in row for row in rows)]


def _cell(value, fmt: str, interval=None) -> str:
    if value is None:
        return "–"
    text = fmt.format(value)
    return text if interval is None else f"{text} [{fmt.format(interval[0])}, {fmt.format(interval[1])}]"


def markdown_table(rows: list[dict]) -> str:
    """A markdown table, one line per row: method (xK), then the present metric columns."""
    columns = present_columns(rows)
    lines = [
        "| " + " | ".join(["method"] + [header for _, header, _ in columns]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for row in rows:
        cells = [method_label(row)] + [_cell(row.get(key), fmt, row.get(f"{key}_ci95")) for key, _, fmt in columns]
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
        f"{settings['baseline_samples']}"
        + "".join(f" ({name} {k})" for name, k in settings.get("samples_for", {}).items())
        + f"; device {results['versions']['device']}.",
        "",
    ]
    if results.get("flow_step") is not None:
        lines += [f"APD flow: checkpoint at step {results['flow_step']}.", ""]
    for name, entry in results["sets"].items():
        lines += [f"## {name}: {entry['num_measurements']} measurements of {entry['dataset'].name}", ""]
        lines += [markdown_table(entry["rows"]) if entry["rows"] else "(no method ran)", ""]
        lines += comparison_lines(entry)
        if entry.get("calibration", {}).get("curves"):
            lines += [f"![calibration]({name}_calibration.png)", ""]
    if results.get("generalization_gap"):
        lines += ["Generalization gap of APD (PSNR on the first training measurements, which the flow was trained on, "
                  "minus PSNR on the held-out ones above):", ""]
        lines += [f"- {label}: train {g['train_psnr']:.2f} dB, held-out {g['held_out_psnr']:.2f} dB, gap {g['gap_db']:+.2f} dB"
                  for label, g in results["generalization_gap"].items()] + [""]
    if results["notes"]:
        lines += ["Notes:", ""] + [f"- {note}" for note in results["notes"]] + [""]
    lines += [LEGEND, ""]
    return "\n".join(lines)


def comparison_lines(entry: dict) -> list[str]:
    """Markdown lines: APD minus the best baseline at equal k, and APD's mean against Noise2Score (denoising)."""
    lines = []
    for c in entry.get("comparisons", []):
        ratio = f"; the baseline takes {c['time_128_ratio']:.3g}x APD's time for 128 samples" if "time_128_ratio" in c else ""
        lines.append(f"- APD x{c['k']} minus the best baseline at x{c['k']} ({DISPLAY_NAMES.get(c['baseline'], c['baseline'])}): "
                     f"{c['psnr_diff']:+.2f} dB [{c['psnr_diff_ci95'][0]:+.2f}, {c['psnr_diff_ci95'][1]:+.2f}]{ratio}")
    for r in entry.get("tweedie_reference", []):
        lines.append(f"- APD x{r['k']} minus Noise2Score (the prior's exact posterior mean): {r['psnr_diff']:+.2f} dB "
                     f"[{r['psnr_diff_ci95'][0]:+.2f}, {r['psnr_diff_ci95'][1]:+.2f}]; MSE between them {r['mse_to_reference']:.2e}")
    return lines + [""] if lines else []


def write_csv(results: dict, path: str) -> str:
    """One line per (set, row): set, method, samples and every metric column any row has."""
    all_rows = [row for entry in results["sets"].values() for row in entry["rows"]]
    fields = ["set", "method", "samples"] + [key for key, _, _ in present_columns(all_rows)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        for name, entry in results["sets"].items():
            for row in entry["rows"]:
                writer.writerow({"set": name, **{k: v for k, v in row.items() if k in fields}})
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
    """Write every file of the evaluation into out_dir; returns {file name: path}.

    The files are written to a temporary folder inside out_dir first and moved into place only when all are
    written, so a failed run never leaves a mix of old and new results (other files of out_dir stay).
    """
    os.makedirs(out_dir, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".writing-", dir=out_dir)
    try:
        names = _write_files(results, tmp_dir)
        for name in names:
            os.replace(os.path.join(tmp_dir, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {name: os.path.join(out_dir, name) for name in names}


def _write_files(results: dict, out_dir: str) -> list[str]:
    """Write every file of the evaluation into out_dir; returns their names."""
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
        if "measurements" in entry:
            npz = write_measurement_file(os.path.join(out_dir, f"{name}_measurements.npz"), **entry["measurements"])
            paths[os.path.basename(npz)] = npz
        png = save_dataset_figure(os.path.join(out_dir, f"{name}_figure.png"), entry["dataset"], figure_rows(entry))
        paths[os.path.basename(png)] = png
        calibration = entry.get("calibration", {})
        if calibration.get("curves"):
            curves = {DISPLAY_NAMES.get(m, m): c for m, c in calibration["curves"].items()}
            png = save_calibration_curves(os.path.join(out_dir, f"{name}_calibration.png"), calibration["levels"], curves,
                                          f"{name}: coverage of central intervals, K = {calibration['num_samples']}")
            paths[os.path.basename(png)] = png
    return list(paths)
