"""CPU twin of configs/celeba32_deblur.py: the 16-channel prior of configs/celeba32_cpu.py and the conv flow (`:realnvp` for the dense one).

    mkdir -p ~/runs/celeba32_deblur_cpu && ln -s ~/runs/celeba32_cpu/prior ~/runs/celeba32_deblur_cpu/prior
    python train.py --config configs/celeba32_deblur_cpu.py --workdir ~/runs/celeba32_deblur_cpu
"""
from ml_collections import ConfigDict

from configs.celeba32_deblur import ESTIMATE, OPERATOR
from configs.celeba32_denoise import cpu_size


def get_config(flow: str = ""):
    config = cpu_size(OPERATOR, flow)
    config.flow.model.estimate = ESTIMATE
    # DDRM eta: the best of a sweep on 32 validation-range faces x 2 draws (benchmarks/tune_baseline.py,
    # docs/results/celeba32_deblur/tuning.json; flat within 0.01 dB for eta <= 0.125, at the grid's lower edge after
    # three extensions). DPS zeta, PiGDM w, C-PiGDM w, RED-diff lambda: the best of sweeps on 16 validation-range
    # faces x 1 draw (docs/results/celeba32_deblur/tuning_more.json). C-PiGDM runs its noiseless form: the
    # first-order noisy one multiplies each direction by exp(w s_y^2 / (2 s_j^2) ...), which overflows for the
    # blur's smallest kept singular values (s_j ~ 1e-3; NaN at every w tried).
    config.baselines = ConfigDict(dict(ddrm=dict(eta=0.03125), dps=dict(zeta=1.0), pigdm=dict(w=1.0),
                                       cpigdm=dict(w=0.3, first_order_noise=False), reddiff=dict(lam=0.06)))
    return config
