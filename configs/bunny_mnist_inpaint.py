"""Bunny-MNIST inpainting: 30% of the 1,889 vertices hidden (one fixed mask), s = 0.1. CPU: ~75 min in all.

    python train.py --config configs/bunny_mnist_inpaint.py --workdir runs/bunny_mnist_inpaint
    python benchmarks/tune_baseline.py --config configs/bunny_mnist_inpaint.py --workdir runs/bunny_mnist_inpaint \
        --baselines dps,mcg,pigdm,cpigdm,ddrm,reddiff --out docs/results/bunny_mnist_inpaint/tuning.json
    python evaluate.py --config configs/bunny_mnist_inpaint.py --workdir runs/bunny_mnist_inpaint \
        --baselines dps,mcg,pigdm,cpigdm,ddrm,reddiff --num_measurements 128 --baseline_samples 32
"""
from ml_collections import ConfigDict

from configs import bunny_mnist, defaults


def get_config() -> ConfigDict:
    config = bunny_mnist.get_config()
    config.operator = ConfigDict(dict(name="inpaint", noise_std=0.1, hidden_fraction=0.3, mask_seed=0))
    config.flow = ConfigDict()
    config.flow.model = defaults.realnvp(num_couplings=8, width=512, linear_shift=False)  # see configs/era5_impute.py
    config.flow.training = defaults.flow_training(num_steps=8_000, batch_size=32, num_z=2, lr=5e-4)
    # Baseline settings for evaluate.py, each the best of a sweep on 16 validation measurements x 2 draws
    # (benchmarks/tune_baseline.py, the scores in docs/results/bunny_mnist_inpaint/tuning.json): DPS zeta 0.3,
    # MCG alpha 1, PiGDM w 1, C-PiGDM w 9 (noisy first-order variant), DDRM eta 1 (the top of its range), RED-diff
    # lam 4. The per-measurement flow is cut to a CPU budget (METHODS' 20k steps at batch 64 would take hours per
    # measurement here).
    config.baselines = ConfigDict(
        dict(
            dps=dict(zeta=0.3),
            mcg=dict(alpha_step=1.0),
            pigdm=dict(w=1.0),
            cpigdm=dict(w=9.0),
            ddrm=dict(eta=1.0),
            reddiff=dict(lam=4.0),
            flow=dict(num_steps=400, batch_size=16, lr=1e-3, num_couplings=4, width=128),
        )
    )
    return config
