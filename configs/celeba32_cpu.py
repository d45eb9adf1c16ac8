"""CelebA 32x32 prior, CPU size: U-Net ch 32, mult (1,2,2), 1 block, attention at 8 (~2 s a step at batch 64).

    python train.py --config configs/celeba32_cpu.py --workdir runs/celeba32_cpu --stage prior
"""
from ml_collections import ConfigDict

from configs import celeba32, defaults


def get_config() -> ConfigDict:
    config = celeba32.get_config()
    config.prior.model = ConfigDict(
        dict(name="unet", base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)
    )
    config.prior.training = defaults.prior_training(num_steps=3_000, batch_size=32, lr=5e-4, warmup_steps=200, ckpt_every=500, sample_steps=200)
    return config
