"""CPU twin of configs/celeba32_sr2.py: the 16-channel prior of configs/celeba32_cpu.py and the conv flow (`:realnvp` for the dense one).

    mkdir -p ~/runs/celeba32_sr2_cpu && ln -s ~/runs/celeba32_cpu/prior ~/runs/celeba32_sr2_cpu/prior
    python train.py --config configs/celeba32_sr2_cpu.py --workdir ~/runs/celeba32_sr2_cpu
"""
from ml_collections import ConfigDict

from configs.celeba32_sr2 import ESTIMATE, OPERATOR
from configs.celeba32_denoise import cpu_size


def get_config(flow: str = ""):
    config = cpu_size(OPERATOR, flow)
    config.flow.model.estimate = ESTIMATE
    # DDRM eta: the best of a sweep on 32 validation-range faces x 2 draws (benchmarks/tune_baseline.py,
    # docs/results/celeba32_sr2/tuning.json; 24.26 dB at eta 0.5 against 24.16 at 0.25 and 24.12 at 0.85). DPS zeta,
    # PiGDM w, C-PiGDM w (noisy, first-order form, 5 steps), RED-diff lambda: the best of sweeps on 16
    # validation-range faces x 1 draw (docs/results/celeba32_sr2/tuning_more.json). RED-diff's lambda sits at the
    # grid's lower edge, rising by 0.1 dB per halving (26.98 dB at 0.0075, 27.08 at 0.00375): Adam moves the null
    # space of A by the regulariser's gradient however small lambda is, so lambda -> 0 keeps the prior's pull there.
    config.baselines = ConfigDict(dict(ddrm=dict(eta=0.5), dps=dict(zeta=1.0), pigdm=dict(w=1.0), cpigdm=dict(w=81.0),
                                       reddiff=dict(lam=0.00375)))
    return config
