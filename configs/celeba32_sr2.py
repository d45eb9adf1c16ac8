"""CelebA 32x32 2x super-resolution (average pooling), s = 0.01, paper size (GPU); `:conv` for the conv flow.

    python train.py --config configs/celeba32_sr2.py --workdir runs/celeba32_sr2
"""
from configs.celeba32_denoise import paper_size

OPERATOR = dict(name="sr", noise_std=0.01, factor=2)


def get_config(flow: str = ""):
    return paper_size(OPERATOR, flow)
