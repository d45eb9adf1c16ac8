"""CelebA 32x32 Gaussian deblurring (7-tap kernel, width 1 pixel), s = 0.01, paper size (GPU); `:conv` for the conv flow.

    python train.py --config configs/celeba32_deblur.py --workdir runs/celeba32_deblur
"""
from configs.celeba32_denoise import paper_size

OPERATOR = dict(name="deblur", noise_std=0.01, kernel_size=7, width=1.0)
# The flow's estimate: the posterior mean under a Gaussian fit of the prior (apd.objective.fit_wiener, from the
# output fit's prior samples). The pseudo-inverse keeps 2-D singular values down to 9.6e-4, so its noise has a std of
# 0.92 per pixel at s = 0.01 and a flow built on it failed (13.98 dB, docs/results/celeba32_deblur/pinv_1000/).
ESTIMATE = "wiener"


def get_config(flow: str = ""):
    config = paper_size(OPERATOR, flow)
    config.flow.model.estimate = ESTIMATE
    return config
