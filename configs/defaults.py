"""Sections shared by the experiment configs; each experiment overrides what differs."""
from ml_collections import ConfigDict, config_dict


def sde(**overrides) -> ConfigDict:
    return ConfigDict(dict(beta_min=0.1, beta_max=20.0, t_min=1e-3, **overrides))


def prior_training(**overrides) -> ConfigDict:
    """Denoising score matching: Adam with warm-up and clipping, EMA, checkpoints every ckpt_every steps."""
    values = dict(
        batch_size=128,
        num_steps=20_000,
        lr=2e-4,
        warmup_steps=1_000,
        grad_clip=1.0,
        ema_decay=0.999,
        likelihood_weighting=False,
        log_every=100,
        ckpt_every=2_000,
        keep_checkpoints=3,
        max_bad_steps=10,  # consecutive steps with a non-finite loss or gradient (each skipped) before the run stops
        num_samples=16,
        sample_steps=500,
    )
    values.update(overrides)
    return ConfigDict(values)


def flow_training(**overrides) -> ConfigDict:
    """APD flow training: measurements per step, flow samples per measurement, ELBO draws per sample, ..."""
    values = dict(
        batch_size=64,
        num_z=2,
        elbo_draws=1,
        prior_gradient="elbo",  # 'score': the prior term's gradient is the score at score_time (apd.objective)
        score_time=0.01,
        path_gradient=False,  # True: the entropy's gradient through x only ("sticking the landing")
        num_steps=10_000,
        lr=5e-4,
        warmup_steps=500,
        cosine_decay=True,
        grad_clip=1.0,
        ema_decay=0.999,
        prior_signals=0,  # prior samples appended to the training signals (drawn once, kept in flow/)
        data_signals=True,  # False: train on the prior samples alone, no clean signal (needs prior_signals > 0)
        fresh_noise=False,  # new measurement noise (and masks) every step instead of one fixed y per signal
        forward_kl_steps=0,  # > 0: first maximise log q(x|y) on prior samples (needs prior_signals), then APD
        fit_output="prior",  # output map fitted to pairs from prior samples ('data': clean training signals; 'none')
        # a user's measurement file (.npy y, or .npz y and mask) to train on instead of measuring clean signals
        measurements=config_dict.placeholder(str),
        anneal_steps=0,  # 0: data weight 1 from the start; else a linear ramp that reaches 1 at this step
        log_every=100,
        eval_every=1_000,  # validation runs on logging steps: a multiple of log_every
        eval_num_measurements=64,
        eval_num_samples=16,
        ckpt_every=1_000,
        keep_checkpoints=3,
        max_bad_steps=10,  # consecutive non-finite steps (each skipped) before the run stops
    )
    values.update(overrides)
    return ConfigDict(values)


def realnvp(**overrides) -> ConfigDict:
    """The paper's flow: dense affine couplings on the flattened signal, y fed to every coupling.

    estimate (either flow): the signal-space estimate x0(y) added at the flow's output, 'pinv' (the operator's)
    'wiener' (the Wiener estimate under the prior's Gaussian fit) or, for denoising, 'tweedie' (the prior's posterior
    mean, one score evaluation per measurement; apd.objective.conditions)."""
    values = dict(name="realnvp", num_couplings=8, width=512, depth=2, scale_bound=2.0, linear_shift=True,
                  estimate="pinv")
    values.update(overrides)
    return ConfigDict(values)


def conv_flow(**overrides) -> ConfigDict:
    """Convolutional conditional flow for images: squeeze levels of channel couplings with conv conditioners."""
    values = dict(name="conv", num_levels=3, couplings_per_level=4, channels=64, scale_bound=2.0, estimate="pinv")
    values.update(overrides)
    return ConfigDict(values)


def flow_model(variant: str, realnvp_sizes: dict, conv_sizes: dict) -> ConfigDict:
    """The flow section for a config-file argument: '' or 'realnvp' (the paper's), or 'conv'."""
    if variant in ("", "realnvp"):
        return realnvp(**realnvp_sizes)
    if variant == "conv":
        return conv_flow(**conv_sizes)
    raise ValueError(f"unknown flow variant {variant!r}; use configs/<task>.py:realnvp or configs/<task>.py:conv")
