"""Prior on scikit-learn's bundled 8x8 digits (no data files needed): a residual-MLP score network.

    python train.py --config configs/digits.py --workdir runs/digits --stage prior
"""
from ml_collections import ConfigDict

from apd.data import data_config
from configs import defaults


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.data = data_config("digits")
    config.prior = ConfigDict()
    config.prior.sde = defaults.sde()
    config.prior.model = ConfigDict(dict(name="mlp", width=512, num_blocks=4))
    config.prior.training = defaults.prior_training(num_steps=8_000, batch_size=128, lr=1e-3, warmup_steps=200, ckpt_every=1_000)
    return config
