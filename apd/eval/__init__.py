"""Evaluation: metrics (PSNR, SSIM, LPIPS, FID, calibration, sliced Wasserstein, bootstrap intervals) and figures
(image grids, mesh and map renders)."""
from apd.eval.figures import (
    save_image_grid,
    save_latlon_maps,
    save_mesh_renders,
    save_signal_figure,
    save_sphere_renders,
)
from apd.eval.metrics import (
    bootstrap_ci,
    calibration_error,
    coverage,
    fid_from_features,
    frechet_distance,
    load_inception_weights,
    lpips,
    mse,
    posterior_mean,
    posterior_std,
    psnr,
    ssim,
    sliced_wasserstein,
    ssim_window_size,
    unit_directions,
)

__all__ = [
    "bootstrap_ci",
    "calibration_error",
    "coverage",
    "fid_from_features",
    "frechet_distance",
    "load_inception_weights",
    "lpips",
    "mse",
    "posterior_mean",
    "posterior_std",
    "psnr",
    "ssim",
    "ssim_window_size",
    "sliced_wasserstein",
    "unit_directions",
    "save_image_grid",
    "save_latlon_maps",
    "save_mesh_renders",
    "save_signal_figure",
    "save_sphere_renders",
]
