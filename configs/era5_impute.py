"""ERA5 imputation on the sphere: 60% of the 4,140 vertices hidden (one fixed mask), s = 0.05. The prior is the
residual MLP, or with the `:grid` suffix the grid U-Net of configs/era5_sphere.py:grid (the baseline settings
below were tuned with the MLP prior).

    python train.py --config configs/era5_impute.py --workdir runs/era5_impute
    python train.py --config configs/era5_impute.py:grid --workdir runs/era5_impute_grid
    python benchmarks/tune_baseline.py --config configs/era5_impute.py --workdir runs/era5_impute \
        --baselines dps,mcg,pigdm,cpigdm,ddrm,reddiff --num_measurements 3 --out docs/results/era5_impute/tuning.json
    python evaluate.py --config configs/era5_impute.py --workdir runs/era5_impute \
        --baselines dps,mcg,pigdm,cpigdm,ddrm,reddiff --split test,val --num_measurements 4 --baseline_samples 32

Offline there are 3 validation fields: the baselines are tuned on them and the val table reuses them, so only
the test table (4 fields) is held out from tuning; both are marked data-limited.
"""
from ml_collections import ConfigDict

from configs import defaults, era5_sphere


def get_config(model: str = "") -> ConfigDict:
    config = era5_sphere.get_config(model)
    config.operator = ConfigDict(dict(name="impute", noise_std=0.05, hidden_fraction=0.6, mask_seed=0))
    config.flow = ConfigDict()
    # No linear shift path: at 4,140 vertices it is 100M of the 125M parameters and 7x the step time
    # (apd/flows/realnvp.py); the estimate skip passes y at full rank. ~5.5 steps/s on the 2-core CPU: 4,000 steps
    # take ~12 min alone (validation on the 3 val fields every 500 steps).
    # The estimate x0(y) is the Wiener estimate of the prior's Gaussian fit (mean and covariance of prior samples):
    # at 2,000 steps on one prior it beat the pseudo-inverse by +0.30 dB test / +0.63 dB val for the mean of 32
    # (docs/results/ablations.md, section 9).
    config.flow.model = defaults.realnvp(num_couplings=8, width=256, linear_shift=False, estimate="wiener")
    config.flow.training = defaults.flow_training(
        num_steps=4_000, batch_size=16, num_z=2, lr=5e-4, warmup_steps=100, eval_every=500,
        eval_num_measurements=3,
    )
    # Baseline settings for evaluate.py, each the best of a sweep on the 3 validation fields x 2 draws
    # (benchmarks/tune_baseline.py; scores in docs/results/era5_impute/tuning.json): DPS zeta 0.3, MCG alpha 1,
    # PiGDM w 1, C-PiGDM w 81 (noisy first-order variant; 243 collapses), DDRM eta 1 (the top of its range), RED-diff
    # lam 1.2e-5 (it improves as its prior term vanishes, down to there).
    config.baselines = ConfigDict(
        dict(
            dps=dict(zeta=0.3),
            mcg=dict(alpha_step=1.0),
            pigdm=dict(w=1.0),
            cpigdm=dict(w=81.0),
            ddrm=dict(eta=1.0),
            reddiff=dict(lam=1.163e-5),
        )
    )
    return config
