"""CelebA 32x32 prior at the paper's size: NCSN++/DDPM++-style U-Net, ch 128, mult (1,2,2,2), 2 blocks, attention at 16.

Needs a GPU (one H200: roughly a day for 400k steps); on CPU run a few steps as a smoke test:

    python train.py --config configs/celeba32.py --workdir runs/celeba32 --stage prior
    python train.py --config configs/celeba32.py --workdir /tmp/smoke --stage prior \
        --config.prior.training.num_steps=2 --config.prior.training.batch_size=8 --config.prior.training.sample_steps=2
"""
from ml_collections import ConfigDict

from apd.data import data_config
from configs import defaults


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.data = data_config("celeba32")
    config.prior = ConfigDict()
    config.prior.sde = defaults.sde()
    config.prior.model = ConfigDict(
        dict(name="unet", base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)
    )
    config.prior.training = defaults.prior_training(
        num_steps=400_000, batch_size=128, lr=2e-4, warmup_steps=5_000, ema_decay=0.9999, ckpt_every=10_000, num_samples=64, sample_steps=1_000
    )
    return config
