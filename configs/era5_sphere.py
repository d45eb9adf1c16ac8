"""Prior of ERA5 2 m temperature on the 46x90 lat-lon grid as a signal on 4,140 sphere vertices: the residual MLP,
or with the `:grid` suffix a 2-D U-Net on the grid that wraps around in longitude (apd/nets/grid_unet.py) at CPU size:
32 channels, mult (1,2,2), 1 block, no attention, 1.05M parameters. Measured at batch 32 on one core of the 2-core CPU
while another training ran on it (niced): 4.5-5.3 s a step, some steps 11-12 s, so 4,000 steps take 5-6 h there.

    python train.py --config configs/era5_sphere.py --workdir runs/era5_impute --stage prior
    python train.py --config configs/era5_sphere.py:grid --workdir runs/era5_impute_grid --stage prior

Offline, only the 25 real 2 m fields of ../shared/data exist (18 train): pass data.path to a folder of the full
era5_temp2m_16x set (8,510 / 2,420) for a prior worth the name.
"""
from ml_collections import ConfigDict

from apd.data import data_config
from apd.data.era5 import GRID_SHAPE
from configs import defaults


def get_config(model: str = "") -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.data = data_config("era5_sphere")
    config.prior = ConfigDict()
    config.prior.sde = defaults.sde()
    config.prior.model = score_net(model)
    config.prior.training = defaults.prior_training(
        num_steps=4_000, batch_size=32, lr=3e-4, warmup_steps=500, ema_decay=0.999, ckpt_every=1_000, num_samples=6, sample_steps=500
    )
    return config


def score_net(variant: str) -> ConfigDict:
    """The prior's network for a config-file argument: '' (the residual MLP) or 'grid' (the grid U-Net)."""
    if variant == "":
        return ConfigDict(dict(name="mlp", width=1024, num_blocks=4))
    if variant == "grid":
        return ConfigDict(
            dict(name="grid_unet", base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, grid_shape=GRID_SHAPE)
        )
    raise ValueError(f"unknown ERA5 prior variant {variant!r}; use configs/<task>.py or configs/<task>.py:grid")
