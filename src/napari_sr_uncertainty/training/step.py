"""The jitted training step of any registered model: dropout samples, loss, gradients, Adam.

Models train through their Flax module (``spec.module()``: ``prefix`` once, ``head`` per dropout sample,
:class:`~napari_sr_uncertainty.models.dropout.KeyedDropout` keyed on per-crop sample ids), with the loss on
the crop interior that excludes ``context * scale`` HR border pixels (``TrainConfig.context_lr``, by default
the model's halo: there the crop's own "same" zero padding would make it unlike the image). Where a crop reaches past its image's border, ``inside`` (from
:class:`~napari_sr_uncertainty.training.data.CropSampler`) zeroes it there, at every layer, as the image's
border is at inference. Models listed in :data:`FAST_PATHS` have a hand-written forward pass that computes
the same samples faster; the tests hold each equal to the module (loss and gradients).

Sample ids: sample ``j`` of crop ``i`` in a batch of ``N`` uses id ``j * N + i``, so with one sample per
crop the masks are those of plain dropout training.
"""

from __future__ import annotations

from importlib import import_module

#: registry id -> module of this package with ``samples_valid(params, lr, seed, ids, rate, inside)``
FAST_PATHS = {"esrcnn-x2": "esrcnn", "espcn-x3": "espcn", "srcnn-gray-x1": "srcnn_gray"}

#: Most LR crop pixels in one slice of a fast path's batch (4 crops of 33x33), see :func:`batch_pieces`
PIECE_LR_PIXELS = 4356


def step_seed(config, step):
    """The dropout-mask seed of a step (uint32)."""
    import jax.numpy as jnp

    return jnp.uint32(config.seed) * jnp.uint32(0x9E3779B9) + jnp.asarray(step).astype(jnp.uint32)


def module_samples(spec, params, lr, seed, ids, inside=None, context=None):
    """Dropout samples (K, N, s h - 2 b, s w - 2 b, C) of the crops through the Flax module, ``b = context * scale``.

    ``inside`` (N, h, w) is 1 where a crop lies in its image (None: everywhere); ``context`` (LR pixels a
    side left out of the samples) defaults to the spec's halo.
    """
    import jax
    import jax.numpy as jnp

    from ..models.dropout import Grid

    module = spec.module()
    grid = Grid(jnp.zeros(2, jnp.int32), jnp.asarray(lr.shape[1:3], jnp.int32), jnp.asarray(seed, jnp.uint32), inside)
    variables = {"params": params}
    h = module.apply(variables, lr, grid, method="prefix")
    out = jax.vmap(lambda i: module.apply(variables, h, grid, i, method="head"))(jnp.asarray(ids, jnp.int32))
    b = (spec.halo if context is None else context) * spec.scale
    return out[:, :, b:-b, b:-b] if b else out


def dropout_samples(config, params, lr, seed, ids, fast: bool = True, inside=None):
    """The K x N dropout samples of a batch's crop interiors (fast path where the model has one: they crop
    the halo)."""
    spec = config.spec
    if uses_fast_path(config, fast):
        return import_module(f"{__package__}.{FAST_PATHS[spec.id]}").samples_valid(
            params, lr, seed, ids, spec.dropout_rate, inside
        )
    return module_samples(spec, params, lr, seed, ids, inside, config.context_lr)


def sample_ids(k: int, n: int):
    """(k, n) sample ids: sample ``j`` of crop ``i`` gets ``j * n + i``."""
    import jax.numpy as jnp

    return jnp.arange(k * n, dtype=jnp.int32).reshape(k, n)


def training_loss(params, lr, hr, seed, config, ids=None, fast: bool = True, inside=None):
    """``(pixel + uncertainty_weight * uncertainty, (pixel, uncertainty))`` for a batch (or a piece of one).

    ``hr`` is the whole crop's HR or just its interior's; ``inside`` as in :func:`module_samples`.
    """
    from .losses import combined_loss, target_crop

    ids = sample_ids(config.mc_train_samples, lr.shape[0]) if ids is None else ids
    samples = dropout_samples(config, params, lr, seed, ids, fast, inside)
    return combined_loss(samples, target_crop(hr, samples.shape[2]), config)


def project_conflict(main, other):
    """``other`` (a gradient pytree) less its component along ``main`` when the two conflict (a negative dot
    product; "gradient surgery", Yu et al. 2020): a small step along the result does not raise ``main``'s loss
    to first order. Unchanged when they agree."""
    import jax
    import jax.numpy as jnp

    def total(tree):
        return sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(tree))

    dot = total(jax.tree_util.tree_map(jnp.multiply, main, other))
    norm = total(jax.tree_util.tree_map(jnp.square, main))
    factor = jnp.where(dot < 0, dot / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny), 0.0)
    return jax.tree_util.tree_map(lambda o, m: o - factor * m, other, main)


def projected_gradients(params, lr, hr, seed, config, ids, fast: bool = True, inside=None):
    """``(pixel, uncertainty, gradients)`` of :func:`training_loss` with the uncertainty loss's gradient less
    its part against the pixel loss's (:func:`project_conflict`): the heatmap is shaped without trading the
    prediction, to first order. One forward pass, one backward pass per loss."""
    import jax
    import jax.numpy as jnp

    (pixel, spread), pullback = jax.vjp(lambda p: training_loss(p, lr, hr, seed, config, ids, fast, inside)[1], params)
    (pixel_grads,) = pullback((jnp.ones(()), jnp.zeros(())))
    (spread_grads,) = pullback((jnp.zeros(()), jnp.ones(())))
    spread_grads = project_conflict(pixel_grads, spread_grads)
    weight = config.uncertainty_weight
    return pixel, spread, jax.tree_util.tree_map(lambda a, b: a + weight * b, pixel_grads, spread_grads)


def make_schedule(config):
    """Linear warmup to ``learning_rate``, then cosine decay to ``final_lr_fraction`` of it at ``steps``."""
    import optax

    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.final_lr_fraction,
    )


def make_optimizer(config):
    """Adam with the run's schedule; the last layer's updates scaled by ``last_layer_lr_scale``."""
    import jax
    import optax

    adam = optax.adam(make_schedule(config))
    if config.last_layer_lr_scale == 1.0:
        return adam
    last = list(config.spec.param_shapes)[-1]
    factor = config.last_layer_lr_scale

    def scale_last(updates, params=None):
        return {k: jax.tree_util.tree_map(lambda u: u * factor, v) if k == last else v for k, v in updates.items()}

    return optax.chain(adam, optax.stateless(scale_last))


def uses_fast_path(config, fast: bool = True) -> bool:
    """Whether a step of this run goes through its model's fast path (it crops the model's full halo)."""
    return fast and config.spec.id in FAST_PATHS and config.context_lr == config.spec.halo


def batch_pieces(config, fast: bool = True, devices: int = 1) -> int:
    """How many equal slices of the batch a step computes one after another, their gradients averaged.

    A fast path's activations stay in the CPU's caches when a slice holds at most :data:`PIECE_LR_PIXELS`
    LR crop pixels (times the dropout samples per crop): ESRCNN's step over 16 crops of 32x32 ran 2.1x
    faster in 4 slices (``bench/train_throughput.py``, the ``fast, in N pieces`` row; ESPCN's and
    SRCNN-gray's 1.0x and 1.2x). One slice through a module (XLA's convolutions inside a loop ran far
    slower), with the uncertainty loss (a statistic of the whole batch) and for a batch split over several
    devices.
    """
    if not uses_fast_path(config, fast) or config.uncertainty_weight > 0 or devices > 1:
        return 1
    n, per_crop = config.batch, config.crop_lr**2 * config.mc_train_samples  # every sample has its activations
    fitting = [p for p in range(1, n + 1) if n % p == 0 and (n // p) * per_crop <= PIECE_LR_PIXELS]
    return fitting[0] if fitting else n


def make_train_step(config, fast: bool = True, pieces: int | None = None):
    """A jitted ``step(params, opt_state, step, lr, hr, inside=None) -> (params, opt_state, losses)`` (dropout on).

    ``lr``, ``hr`` and ``inside`` are a :class:`~napari_sr_uncertainty.training.data.CropBatch`'s. The batch's
    gradients are computed in ``pieces`` slices (default :func:`batch_pieces`); they equal the whole batch's
    to float rounding.

    ``losses`` is ``[pixel loss, uncertainty loss]`` (the second is 0 without ``config.uncertainty_weight``);
    the optimised loss is ``pixel + uncertainty_weight * uncertainty``.
    """
    import jax
    import jax.numpy as jnp
    import optax

    optimizer = make_optimizer(config)

    loss_and_grads = jax.value_and_grad(training_loss, has_aux=True)
    pieces = batch_pieces(config, fast) if pieces is None else pieces

    def batch_gradients(params, lr, hr, seed, inside):
        """The batch's mean losses and gradients: the means of its ``pieces`` slices', computed in a loop."""
        n = lr.shape[0]
        ids = sample_ids(config.mc_train_samples, n)
        if pieces == 1 and config.uncertainty_projection:
            return projected_gradients(params, lr, hr, seed, config, ids, fast, inside)
        if pieces == 1:
            (_, (pixel, spread)), grads = loss_and_grads(params, lr, hr, seed, config, ids, fast, inside)
            return pixel, spread, grads

        def split(x):
            return None if x is None else x.reshape(pieces, n // pieces, *x.shape[1:])

        piece_ids = ids.reshape(ids.shape[0], pieces, n // pieces).transpose(1, 0, 2)

        def one(total, piece):
            piece_lr, piece_hr, piece_sample_ids, piece_inside = piece
            (_, losses), grads = loss_and_grads(
                params, piece_lr, piece_hr, seed, config, piece_sample_ids, fast, piece_inside
            )
            return jax.tree_util.tree_map(jnp.add, total, (losses, grads)), None

        zero = ((jnp.zeros(()), jnp.zeros(())), jax.tree_util.tree_map(jnp.zeros_like, params))
        ((pixel, spread), grads), _ = jax.lax.scan(one, zero, (split(lr), split(hr), piece_ids, split(inside)))
        return pixel / pieces, spread / pieces, jax.tree_util.tree_map(lambda g: g / pieces, grads)

    @jax.jit
    def train_step(params, opt_state, step, lr, hr, inside=None):
        pixel, spread, grads = batch_gradients(params, lr, hr, step_seed(config, step), inside)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.stack([pixel, spread])

    return train_step
