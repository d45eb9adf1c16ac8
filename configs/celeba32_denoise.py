"""CelebA 32x32 denoising, s = 0.1, on the paper-size prior (GPU). The flow is the paper's dense RealNVP, or the
convolutional flow with the `:conv` suffix.

    python train.py --config configs/celeba32_denoise.py --workdir runs/celeba32_denoise
    python train.py --config configs/celeba32_denoise.py:conv --workdir runs/celeba32_denoise_conv
    python evaluate.py --config configs/celeba32_denoise.py --workdir runs/celeba32_denoise --ood ffhq32
"""
from ml_collections import ConfigDict

from configs import celeba32, defaults

OPERATOR = dict(name="denoise", noise_std=0.1)


def get_config(flow: str = "") -> ConfigDict:
    return paper_size(OPERATOR, flow)


def paper_size(operator: dict, flow: str) -> ConfigDict:
    """The GPU configuration of a CelebA task with this operator."""
    config = celeba32.get_config()
    config.operator = ConfigDict(operator)
    config.flow = ConfigDict()
    config.flow.model = defaults.flow_model(flow, dict(num_couplings=16, width=2048), dict(num_levels=3, couplings_per_level=8, channels=128))
    config.flow.training = defaults.flow_training(
        num_steps=100_000, batch_size=64, num_z=2, lr=1e-4, warmup_steps=2_000, eval_every=5_000, ckpt_every=5_000
    )
    return config


def cpu_size(operator: dict, flow: str) -> ConfigDict:
    """The CPU twin: the prior of configs/celeba32_cpu.py and a flow that trains in ~20-40 minutes here (1,000 steps).

    The CPU default flow is the convolutional one (2 levels x 3 couplings, 32 channels: 0.4 M parameters, ~0.3 s
    a step at batch 32 with the 16-channel prior); `:realnvp` gives the paper's dense RealNVP at a CPU size (8
    couplings of width 512 without the linear shift path, ~34 M parameters). Training uses issue 10's levers:
    fresh measurement noise every step, the prior score at t = 0.01 as the prior's gradient (no backward pass
    through the U-Net), and the entropy's path gradient.
    """
    from configs import celeba32_cpu

    config = celeba32_cpu.get_config()
    config.operator = ConfigDict(operator)
    config.flow = ConfigDict()
    config.flow.model = defaults.flow_model(
        flow or "conv", dict(num_couplings=8, width=512, linear_shift=False), dict(num_levels=2, couplings_per_level=3, channels=32)
    )
    config.flow.training = defaults.flow_training(
        num_steps=1_000, batch_size=32, num_z=2, lr=5e-4, warmup_steps=100, fresh_noise=True, prior_gradient="score",
        score_time=0.01, path_gradient=True, log_every=100, eval_every=500, eval_num_measurements=32, ckpt_every=500,
    )
    return config
