"""Prior of ERA5 2 m temperature on the 46x90 lat-lon grid as a signal on 4,140 sphere vertices (residual MLP).

    python train.py --config configs/era5_sphere.py --workdir runs/era5_impute --stage prior

Offline, only the 25 real 2 m fields of ../shared/data exist (18 train): pass data.path to a folder of the full
era5_temp2m_16x set (8,510 / 2,420) for a prior worth the name.
"""
from ml_collections import ConfigDict

from apd.data import data_config
from configs import defaults


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.data = data_config("era5_sphere")
    config.prior = ConfigDict()
    config.prior.sde = defaults.sde()
    config.prior.model = ConfigDict(dict(name="mlp", width=1024, num_blocks=4))
    config.prior.training = defaults.prior_training(
        num_steps=4_000, batch_size=32, lr=3e-4, warmup_steps=500, ema_decay=0.999, ckpt_every=1_000, num_samples=6, sample_steps=500
    )
    return config
