"""Priors: trained score networks and exact Gaussian / Gaussian-mixture priors (see base.Prior)."""
from apd.priors.base import Prior, eps_from_score, tweedie_mean
from apd.priors.gaussian import GaussianMixturePrior, GaussianPrior
from apd.priors.score_net import ScoreNetPrior

__all__ = ["Prior", "GaussianPrior", "GaussianMixturePrior", "ScoreNetPrior", "eps_from_score", "tweedie_mean"]
