"""CPU twin of configs/celeba32_sr2.py: small prior and flow (a smoke run of the whole pipeline on CPU).

    python train.py --config configs/celeba32_sr2_cpu.py --workdir runs/celeba32_sr2_cpu
"""
from configs.celeba32_sr2 import OPERATOR
from configs.celeba32_denoise import cpu_size


def get_config(flow: str = ""):
    return cpu_size(OPERATOR, flow)
