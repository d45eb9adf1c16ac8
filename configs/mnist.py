"""MNIST 28x28 prior: a small DDPM++-style U-Net (GPU recommended; a few steps run on CPU as a smoke test).

    python train.py --config configs/mnist.py --workdir runs/mnist --stage prior
"""
from ml_collections import ConfigDict

from apd.data import data_config
from configs import defaults


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.data = data_config("mnist")
    config.prior = ConfigDict()
    config.prior.sde = defaults.sde()
    config.prior.model = ConfigDict(
        dict(name="unet", base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,), dropout=0.1)
    )
    config.prior.training = defaults.prior_training(num_steps=100_000, batch_size=128, lr=2e-4, warmup_steps=2_000, ema_decay=0.9999, ckpt_every=5_000)
    return config
