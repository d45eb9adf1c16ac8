"""Blind ERA5 imputation: each measurement hides its own 30-60% of the vertices, and the flow is not told the mask.

    python train.py --config configs/era5_impute_blind.py --workdir runs/era5_impute_blind
"""
from ml_collections import ConfigDict

from configs import era5_impute


def get_config() -> ConfigDict:
    config = era5_impute.get_config()
    config.operator = ConfigDict(dict(name="inpaint_blind", noise_std=0.05, hidden_min=0.3, hidden_max=0.6))
    # Every measurement has its own mask, so there is no one operator to fit a Wiener estimate for: the estimate
    # is the blind operator's pseudo-inverse, y itself.
    config.flow.model.estimate = "pinv"
    return config
