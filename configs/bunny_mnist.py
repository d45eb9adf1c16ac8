"""Prior of MNIST digits painted on the Stanford bunny (1,889 vertices): a residual MLP (~20-30 min on 2 CPU cores).

    python train.py --config configs/bunny_mnist.py --workdir runs/bunny_mnist_inpaint --stage prior

The paper's 1-D DDPM over the vertex sequence: `--config.prior.model.name=vertex_unet` (module defaults: 64 channels,
mult (1,2,2), 2 blocks; GPU recommended), best with `--config.data.vertex_order=walk`: in the stored order 25.5% of
consecutive vertices share a mesh edge, in the walk order 99.0% (apd/data/mesh_order.py). The MLP does not care
about the order; the default stays "file" so that existing runs and inpainting masks keep their meaning.
"""
from ml_collections import ConfigDict

from apd.data import data_config
from configs import defaults


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.data = data_config("bunny_mnist", max_train=20_000, vertex_order="file")
    config.prior = ConfigDict()
    config.prior.sde = defaults.sde()
    config.prior.model = ConfigDict(
        dict(name="mlp", width=1024, num_blocks=4)
    )
    config.prior.training = defaults.prior_training(
        num_steps=8_000, batch_size=64, lr=5e-4, warmup_steps=500, ema_decay=0.999, ckpt_every=1_000, num_samples=8, sample_steps=500
    )
    return config
