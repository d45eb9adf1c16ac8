"""CPU twin of configs/celeba32_sr2.py: the 16-channel prior of configs/celeba32_cpu.py and the conv flow (`:realnvp` for the dense one).

    mkdir -p ~/runs/celeba32_sr2_cpu && ln -s ~/runs/celeba32_cpu/prior ~/runs/celeba32_sr2_cpu/prior
    python train.py --config configs/celeba32_sr2_cpu.py --workdir ~/runs/celeba32_sr2_cpu
"""
from configs.celeba32_sr2 import OPERATOR
from configs.celeba32_denoise import cpu_size


def get_config(flow: str = ""):
    return cpu_size(OPERATOR, flow)
