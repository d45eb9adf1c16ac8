"""apd: amortized posterior distillation from a frozen diffusion prior (JAX).

Public API:
    load_sampler(workdir) -> Sampler          posterior samples for new measurements in one network call
    VPSDE                                     the diffusion
    GaussianPrior, GaussianMixturePrior, ScoreNetPrior   priors (exact ones give log_prob)
    elbo(prior, x, key)                       lower bound on log p(x)
    make_operator_family(cfg, signal_shape)   forward operators
"""
from apd.elbo import elbo
from apd.operators import make_operator_family
from apd.priors import GaussianMixturePrior, GaussianPrior, ScoreNetPrior
from apd.sampler import Sampler, load_sampler
from apd.sde import VPSDE

__all__ = [
    "GaussianMixturePrior",
    "GaussianPrior",
    "Sampler",
    "ScoreNetPrior",
    "VPSDE",
    "elbo",
    "load_sampler",
    "make_operator_family",
]
__version__ = "0.1.0"
