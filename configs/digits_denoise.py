"""Digits 8x8 denoising, s = 0.2: the embedded default that `python train.py` runs (CPU, a few minutes).

    python train.py --config configs/digits_denoise.py --workdir runs/digits_denoise
    python evaluate.py --config configs/digits_denoise.py --workdir runs/digits_denoise \
        --baselines dps,mcg,pigdm,cpigdm,ddrm,reddiff,noise2score,flow
"""
from ml_collections import ConfigDict

from configs import defaults, digits


def get_config() -> ConfigDict:
    config = digits.get_config()
    config.operator = ConfigDict(dict(name="denoise", noise_std=0.2))
    config.flow = ConfigDict()
    config.flow.model = defaults.realnvp(num_couplings=8, width=256)
    config.flow.training = defaults.flow_training(num_steps=4_000, batch_size=64, num_z=2, lr=1e-3)
    # Baseline settings for evaluate.py, each the best of a sweep on validation measurements
    # (benchmarks/tune_baseline.py): DPS zeta in {0.02, 0.05, 0.1, 0.25, 0.5}, RED-diff lam in {0.25, 1, 4, 16},
    # C-PiGDM w in {0.5, 1, 3}. MCG's gradient acts only in the null space of A, empty for denoising.
    # The per-measurement flow is cut to a CPU budget (METHODS: 20k steps at batch 64, lr 1e-5).
    config.baselines = ConfigDict(
        dict(
            dps=dict(zeta=0.05),
            reddiff=dict(lam=4.0),
            cpigdm=dict(w=3.0),
            flow=dict(num_steps=1000, batch_size=32, lr=1e-3, num_couplings=4, width=128),
        )
    )
    return config
