"""Posterior samples for a file of measurements with a trained APD flow (also the console script `apd-sample`).

    python sample.py --workdir runs/digits_denoise --measurements runs/digits_denoise/eval/test_measurements.npz
    python sample.py --workdir runs/era5_impute --measurements y.npz --num_samples 64 --summary --out my_samples

Input: .npy (y (N,*M)) or .npz (y, and mask (N,*S) where each measurement has its own); NaN in y marks
entries not measured (masked tasks). Output in --out (default <workdir>/samples): samples.npz (samples
(N, K, *S)) or, with --summary, summary.npz (mean, std, quantiles), and figures/measurement_<i>.png. See
apd/sample_command.py for every flag.
"""
from absl import app

from apd.sample_command import main

if __name__ == "__main__":
    app.run(main)
