"""Training losses: the pixel loss and the uncertainty loss (any model, any colour mode)."""

from __future__ import annotations


def target_crop(hr, out_size: int):
    """The part of HR crops that a crop's interior prediction covers (centre ``out_size`` square)."""
    border = (hr.shape[1] - out_size) // 2
    return hr[:, border : border + out_size, border : border + out_size]


def pixel_loss(pred, target, kind: str):
    """Mean absolute ("l1") or squared ("mse") error."""
    import jax.numpy as jnp

    diff = pred - target
    return jnp.mean(jnp.abs(diff)) if kind == "l1" else jnp.mean(diff * diff)


def uncertainty_loss(samples, target, window: int, eps: float = 1e-6):
    """Spread of log(MC variance / squared error) over ``window`` x ``window`` HR windows (scale-free).

    The MC-dropout variance of the output, estimated from the ``K`` samples, should be proportional to the
    squared error of their mean wherever the image is. This loss is the variance, over all windows of the
    batch, of ``log(window mean variance) - log(window mean squared error)``: zero when the two are
    proportional, whatever the factor (which the calibration fits afterwards), so it shapes *where* the
    model is uncertain, not how much. The error is a constant here (stop-gradient): this term moves only
    the variance, while the pixel loss moves the prediction. Windows average out the noise of a
    few-sample variance and of single-pixel errors.

    Parameters
    ----------
    samples : array, (K, N, H, W, C)
        K >= 2 dropout samples of the output.
    target : array, (N, H, W, C)
        Ground truth.
    window : int
        Window side in HR pixels; H and W are cropped to a multiple of it.
    eps : float
        Added to both window means (1e-6 is about the variance of uint8 rounding) so flat, error-free
        windows do not dominate.
    """
    import jax
    import jax.numpy as jnp

    mean = jax.lax.stop_gradient(samples.mean(axis=0))
    variance = samples.var(axis=0, ddof=1).mean(axis=-1)
    sq_error = ((mean - target) ** 2).mean(axis=-1)
    n, h, w = variance.shape
    rows, cols = h // window, w // window

    def window_means(x):
        x = x[:, : rows * window, : cols * window].reshape(n, rows, window, cols, window)
        return x.mean(axis=(2, 4))

    log_ratio = jnp.log(window_means(variance) + eps) - jnp.log(window_means(sq_error) + eps)
    return jnp.var(log_ratio)


def combined_loss(samples, target, config):
    """``(pixel + uncertainty_weight * uncertainty, (pixel, uncertainty))`` of K samples (K, N, H, W, C).

    The pixel loss is that of each sample, or of the samples' mean (``config.pixel_loss_of``). Each sample's
    MSE is the mean's plus the samples' variance, so it fights the uncertainty loss wherever that loss asks
    for more variance; the mean's MSE, the error of what the product shows, charges 1/K of the variance.
    """
    import jax.numpy as jnp

    predicted = samples.mean(axis=0, keepdims=True) if config.pixel_loss_of == "mean" else samples
    pixel = pixel_loss(predicted, target[None], config.loss)
    if config.uncertainty_weight > 0:
        spread = uncertainty_loss(samples, target, config.uncertainty_window)
    else:
        spread = jnp.zeros(())
    return pixel + config.uncertainty_weight * spread, (pixel, spread)
