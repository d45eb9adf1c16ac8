"""One markdown row per flow-training variant, from the results.json that evaluate.py wrote for each.

    python benchmarks/ablation_table.py default=runs/digits_denoise/eval ps=runs/digits_ps/eval ...

For denoising runs evaluated with Noise2Score (the prior's exact posterior mean, Tweedie), each row gives APD's
one sample and mean of 128 (PSNR, 95% bootstrap interval), the mean of 128 minus Noise2Score (dB, interval) and
the MSE between the two means, the generalization gap (training minus held-out measurements, mean of 128), the
90% coverage and calibration error of 128 samples, and the flow checkpoint step.
"""
from __future__ import annotations

import json
import os
import sys


def row(label: str, folder: str) -> str:
    with open(os.path.join(folder, "results.json")) as f:
        result = json.load(f)
    (entry,) = result["sets"].values()
    apd = {r["samples"]: r for r in entry["rows"] if r["method"] == "apd"}
    one, many = apd[1], apd[max(apd)]
    ref = {r["k"]: r for r in entry.get("tweedie_reference") or []}.get(max(apd))
    gap = (result.get("generalization_gap") or {}).get(f"x{max(apd)}")

    def ci(r, key="psnr"):
        low, high = r[f"{key}_ci95"]
        return f"{r[key]:.2f} [{low:.2f}, {high:.2f}]"

    tweedie = "–" if ref is None else (
        f"{ref['psnr_diff']:+.2f} [{ref['psnr_diff_ci95'][0]:+.2f}, {ref['psnr_diff_ci95'][1]:+.2f}] | "
        f"{ref['mse_to_reference']:.2e}")
    if ref is None:
        tweedie += " | –"
    gap_text = "–" if gap is None else f"{gap['gap_db']:+.2f}"
    return (f"| {label} | {ci(one)} | {ci(many)} | {tweedie} | {gap_text} | {many['cov90']:.3f} | "
            f"{many['cal_err']:.3f} | {result['flow_step']} |")


def main(argv: list[str]) -> None:
    if not argv or any("=" not in a for a in argv):
        raise SystemExit("usage: ablation_table.py LABEL=EVAL_FOLDER [LABEL=EVAL_FOLDER ...]")
    print("| flow training | APD x1 | APD x128 | x128 minus Noise2Score (dB) | MSE to Noise2Score | gap (dB) "
          "| cov 90% | cal. err | step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arg in argv:
        label, folder = arg.split("=", 1)
        print(row(label, folder))


if __name__ == "__main__":
    main(sys.argv[1:])
