"""Digits 8x8 denoising, s = 0.2: the embedded default that `python train.py` runs (CPU, a few minutes).

    python train.py --config configs/digits_denoise.py --workdir runs/digits_denoise
"""
from ml_collections import ConfigDict

from configs import defaults, digits


def get_config() -> ConfigDict:
    config = digits.get_config()
    config.operator = ConfigDict(dict(name="denoise", noise_std=0.2))
    config.flow = ConfigDict()
    config.flow.model = defaults.realnvp(num_couplings=8, width=256)
    config.flow.training = defaults.flow_training(num_steps=4_000, batch_size=64, num_z=2, lr=1e-3)
    return config
