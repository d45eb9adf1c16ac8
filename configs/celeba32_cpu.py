"""CelebA 32x32 prior, CPU size: U-Net ch 16, mult (1,2,2), 1 block, attention at 8 (0.25 s a step at batch 32 on
2 cores; 14,000 steps ~ 1 hour).

The width is the winner of `benchmarks/prior_sizing.py` (docs/results/priors/celeba32_sizing.json): at equal
training seconds on this machine, 16 channels reached a lower validation DSM loss than 32 or 48, and every
sampler that calls the prior (the APD flow's training, DPS, PiGDM, DDRM) runs ~3.5x faster than at 32.

    python train.py --config configs/celeba32_cpu.py --workdir ~/runs/celeba32_cpu --stage prior
"""
from ml_collections import ConfigDict

from configs import celeba32, defaults


def get_config() -> ConfigDict:
    config = celeba32.get_config()
    config.prior.model = ConfigDict(
        dict(name="unet", base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)
    )
    config.prior.training = defaults.prior_training(
        num_steps=14_000, batch_size=32, lr=5e-4, warmup_steps=200, ckpt_every=1_000, num_samples=64, sample_steps=500
    )
    return config
