"""CelebA 32x32 2x super-resolution (average pooling), s = 0.01, paper size (GPU); `:conv` for the conv flow.

    python train.py --config configs/celeba32_sr2.py --workdir runs/celeba32_sr2
"""
from configs.celeba32_denoise import paper_size

OPERATOR = dict(name="sr", noise_std=0.01, factor=2)
# The flow's estimate: the posterior mean under a Gaussian fit of the prior (apd.objective.fit_wiener), an
# interpolation learnt from prior samples; the pseudo-inverse (nearest-neighbour upsampling) left its 2x2 blocks in
# the flow's samples (docs/results/celeba32_sr2/pinv_1000/).
ESTIMATE = "wiener"


def get_config(flow: str = ""):
    config = paper_size(OPERATOR, flow)
    config.flow.model.estimate = ESTIMATE
    return config
