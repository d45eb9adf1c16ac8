"""CPU twin of configs/celeba32_denoise.py: the 16-channel prior of configs/celeba32_cpu.py and the conv flow (`:realnvp` for the dense one)
with the prior's Tweedie estimate.

    python train.py --config configs/celeba32_cpu.py --workdir ~/runs/celeba32_cpu --stage prior  # ~1 hour, once
    mkdir -p ~/runs/celeba32_denoise_cpu && ln -s ~/runs/celeba32_cpu/prior ~/runs/celeba32_denoise_cpu/prior
    python train.py --config configs/celeba32_denoise_cpu.py --workdir ~/runs/celeba32_denoise_cpu
    python train.py --config configs/celeba32_denoise_cpu.py:realnvp --workdir ~/runs/celeba32_denoise_cpu_realnvp

The three CelebA tasks share the one prior (a link to its folder); the output fit's prior samples are drawn once
into it and reused by every task.
"""
from ml_collections import ConfigDict

from configs.celeba32_denoise import OPERATOR
from configs.celeba32_denoise import cpu_size


def get_config(flow: str = ""):
    config = cpu_size(OPERATOR, flow)
    # The flow's estimate is the prior's posterior mean E[x|y] (Tweedie, one score evaluation per measurement): after
    # 1,000 steps, on 256 held-out faces, one sample 24.70 dB and the mean of 128 28.28 dB, against 21.44 / 23.33 dB
    # for the pseudo-inverse estimate after 3,000 steps (docs/results/celeba32_denoise/).
    config.flow.model.estimate = "tweedie"
    # DDRM eta: the best of a sweep on 32 validation-range faces x 2 draws (benchmarks/tune_baseline.py,
    # docs/results/celeba32_denoise/tuning.json; PSNR flat within 0.02 dB for eta <= 0.25). PiGDM w, C-PiGDM w (noisy,
    # first-order form, 5 steps), RED-diff lambda: the best of sweeps on 16 validation-range faces x 1 draw
    # (docs/results/celeba32_denoise/tuning_more.json; 27.14, 21.45 and 24.81 dB, each interior to its grid).
    config.baselines = ConfigDict(dict(pigdm=dict(w=1.0), cpigdm=dict(w=9.0), reddiff=dict(lam=4.0),
                                       ddrm=dict(eta=0.03125)))
    return config
