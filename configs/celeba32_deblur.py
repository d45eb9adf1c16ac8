"""CelebA 32x32 Gaussian deblurring (7-tap kernel, width 1 pixel), s = 0.01, paper size (GPU); `:conv` for the conv flow.

    python train.py --config configs/celeba32_deblur.py --workdir runs/celeba32_deblur
"""
from configs.celeba32_denoise import paper_size

OPERATOR = dict(name="deblur", noise_std=0.01, kernel_size=7, width=1.0)


def get_config(flow: str = ""):
    return paper_size(OPERATOR, flow)
