"""The iterative update: a Gaussian posterior refined one mini-batch at a time.

The state carries two Gaussians over the flat unconstrained latents: a *running* estimate that the
update drives towards the variational optimum, and the *readout* that the guide reports. One step

1. evaluates the gradient of the model's log joint at ``2 D`` cubature points of the running
   Gaussian, with the mini-batch's log likelihood scaled to the whole data set (the reparameterized
   ELBO gradient with respect to the location and the full scale matrix, as SVI computes it);
2. turns it into the mean gradient ``g`` and the whitened curvature ``M = -L^T E[Hessian] L``
   (Stein's identity: ``E[grad f(mu + L eps) eps^T] = E[Hessian] L``);
3. lets the update network's memory (a GRU cell) read the encoded mini-batch, these whitened
   (scale-free) features and the schedule;
4. takes a natural-gradient step of the Bayesian learning rule (Khan & Rue, 2023) with the base
   step size ``rho``: ``Lambda' = (1 - rho) Lambda + rho (-E[Hessian])``,
   ``mu' = mu + rho Lambda'^{-1} g``;
5. reads the posterior out: the running Gaussian, corrected by the readout network from the
   *staleness* of its linearizations and the memory (below).

The step size is ``1 / (j + 1)`` at the ``j``-th mini-batch of the first pass and
``1 / (j + 1 + floor(P / 2))`` in later passes (``P`` mini-batches per pass; see
:func:`base_schedule`). In the first pass this averages the natural parameters of the mini-batch
estimates, which for a model with a Gaussian posterior in the unconstrained space
(linear-Gaussian) gives the exact posterior at the end of the pass: the likelihood of a mini-batch
is scaled by ``P``, so the pass average is the full-data sum whatever the batch sizes. The network
never touches the running Gaussian, so training cannot break this; it only corrects the readout.

Why a readout correction can beat more passes. The running Gaussian is a weighted sum of the
quadratic models of every mini-batch's log density, each expanded where the state *was* when the
mini-batch was read (``mu' Lambda' = (1 - rho) Lambda mu + rho (Lambda_j mu_j + g_j)``). Early in a
pass those points are several posterior SDs from where the pass ends (the estimate after ``j`` of
``P`` mini-batches has seen a ``j / P`` share of the data), and the sum carries the error of
expanding there: to second order, the model's third derivatives contracted with the spread of the
linearization points about the final location. The base removes it only by re-reading the data
(each pass expands nearer). The state therefore carries the weighted first and second moments of
its linearization points about the running location, with the very weights the running precision
gives each mini-batch (the same recursion), so that at any step the readout network sees, in the
running Gaussian's whitened frame, how stale the expansions behind it are (``d``, ``S``), where the
posterior is relative to the prior (the third derivatives depend on it), and how narrow it is: its
output, a whitened shift and log-scales bounded by ``tanh``, is multiplied by ``kappa``: the posterior-to-prior SD
ratio (the geometric mean over coordinates, at most 1), because the whitened third derivatives of a
sum of ``N`` log-likelihood terms fall as ``N^{-1/2}`` like the SDs, times the RMS staleness
``sqrt(mean diag S)``, so that fresh expansions (a converged state) get no correction. With its
last layer at zero the readout is the running Gaussian: the base. What it buys, beside the base
and Laplace in one run: ``benchmarks/bench_iterative_learned.py``.

The cubature rule (points ``+-sqrt(D) Q e_i`` with a random Householder rotation ``Q``) is exact for
quadratic log densities; the rotation makes it unbiased on average for smooth non-quadratic ones.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from amortized_ppl import linalg
from amortized_ppl.laplace import newton_laplace

__all__ = [
    "IterativeInfo",
    "IterativeState",
    "base_schedule",
    "build_kernel",
    "cubature_points",
    "curvature",
    "laplace_start",
    "natural_gradient_step",
    "num_features",
    "num_readout_features",
    "readout_features",
    "schedule_position",
    "track_staleness",
]



class IterativeState(NamedTuple):
    """State of the iterative guide for one data set.

    Attributes:
        loc: readout location, ``(D,)``.
        scale_tril: readout Cholesky factor, ``(D, D)``.
        run_loc: running (natural-gradient) location, ``(D,)``.
        run_scale_tril: running Cholesky factor, ``(D, D)``.
        memory: the update network's recurrent memory, ``(H,)``.
        step: mini-batches read so far, int32 scalar.
        stale_mean: weighted mean of the linearization points behind the running Gaussian,
            minus ``run_loc`` (``(D,)``; weights as the running precision gives them).
        stale_second: their weighted second moment about ``run_loc``, ``(D, D)``.
    """

    loc: jax.Array
    scale_tril: jax.Array
    run_loc: jax.Array
    run_scale_tril: jax.Array
    memory: jax.Array
    step: jax.Array
    stale_mean: jax.Array
    stale_second: jax.Array


class IterativeInfo(NamedTuple):
    """What one step saw and did (scalars).

    Attributes:
        elbo: mini-batch estimate of the ELBO of the running Gaussian before the step (nats,
            scaled to the whole data set).
        grad_norm: norm of the whitened gradient ``L^T g``.
        curvature_gap: ``||M - I||_F / sqrt(D)``; 0 when the running scale matches the curvature.
        rho_loc, rho_prec: the step sizes used.
        num_real: real observations in the mini-batch.
        skipped: the step produced a non-finite state and was skipped (the state kept).
    """

    elbo: jax.Array
    grad_norm: jax.Array
    curvature_gap: jax.Array
    rho_loc: jax.Array
    rho_prec: jax.Array
    num_real: jax.Array
    skipped: jax.Array


def num_features(latent_dim: int) -> int:
    """Length of the per-step feature vector the update network reads (besides the batch)."""
    return 2 * latent_dim + 7


def num_readout_features(latent_dim: int, memory_size: int) -> int:
    """Length of the readout network's input: the step's features, the whitened staleness
    ``(d, vech S)``, the location and log-SDs relative to the prior, and the memory."""
    d = int(latent_dim)
    return num_features(d) + d + d * (d + 1) // 2 + 2 * d + int(memory_size)


def track_staleness(stale_mean, stale_second, shift, rho):
    """Move the moments of the linearization points to a new running location and add one.

    ``shift`` is the running location's move in this step (new minus old); the point just used
    is the old location, ``-shift`` from the new one, and enters with weight ``rho`` while the
    earlier ones keep ``1 - rho`` (the running precision's recursion). Kept centred on the
    running location, so large data sets (tiny SDs) lose nothing to cancellation.
    """
    mean = stale_mean - shift
    second = (stale_second - jnp.outer(stale_mean, shift) - jnp.outer(shift, stale_mean)
              + jnp.outer(shift, shift))
    new_mean = (1.0 - rho) * mean - rho * shift
    new_second = (1.0 - rho) * second + rho * jnp.outer(shift, shift)
    return new_mean, 0.5 * (new_second + new_second.T)


def readout_features(features, state_loc, state_tril, stale_mean, stale_second, prior):
    """The readout network's input and the scale ``kappa`` of its output (see the module)."""
    prior_loc, prior_sd = prior
    dim = state_loc.shape[0]
    whiten = lambda v: jax.scipy.linalg.solve_triangular(state_tril, v, lower=True)  # noqa: E731
    d = whiten(stale_mean)
    s = whiten(whiten(stale_second).T)  # L^{-1} C L^{-T}
    rows, cols = jnp.triu_indices(dim)
    sd = jnp.sqrt(jnp.sum(state_tril**2, axis=-1))
    log_ratio = jnp.log(sd / prior_sd)
    # The correction's scale: the posterior-to-prior SD ratio times the RMS staleness (the
    # second-order error of the stale expansions is proportional to both), so that fresh
    # expansions (a converged state, or a pass read whole) leave the running Gaussian as it is.
    staleness = jnp.sqrt(jnp.mean(jnp.diag(s)))
    kappa = jnp.minimum(jnp.exp(jnp.mean(log_ratio)), 1.0) * staleness
    inputs = jnp.concatenate([
        features, jnp.arcsinh(d), jnp.arcsinh(s[rows, cols]),
        jnp.arcsinh((state_loc - prior_loc) / prior_sd), log_ratio,
    ])
    return jax.lax.stop_gradient(inputs), jax.lax.stop_gradient(kappa)


def cubature_points(key: jax.Array, dim: int, dtype=jnp.float32) -> jax.Array:
    """``2 * dim`` points ``+-sqrt(dim) Q e_i`` with a random Householder reflection ``Q``.

    Their mean is 0 and their second moment is the identity, exactly, so Gaussian expectations of
    polynomials up to degree 3 are exact. Returns shape ``(2 * dim, dim)``.
    """
    v = jax.random.normal(key, (dim,), dtype)
    v = v / jnp.linalg.norm(v)
    q = jnp.eye(dim, dtype=dtype) - 2.0 * jnp.outer(v, v)
    axes = jnp.sqrt(jnp.asarray(dim, dtype)) * q
    return jnp.concatenate([axes, -axes], axis=0)


def curvature(
    log_density: Callable[[jax.Array], jax.Array],
    loc: jax.Array,
    scale_tril: jax.Array,
    points: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean value, mean gradient and whitened curvature of ``log_density`` under ``N(loc, L L^T)``.

    Args:
        log_density: ``u (D,) -> scalar``.
        loc: ``(D,)``; scale_tril: ``(D, D)``.
        points: standard-normal cubature points ``(S, D)`` with mean 0 and identity second moment.

    Returns:
        ``(value, g, M)``: the mean log density (scalar), the mean gradient ``(D,)`` and
        ``M = -sym(L^T E[grad eps^T])`` ``(D, D)``, which equals ``-L^T H L`` for a quadratic log
        density with Hessian ``H`` (the identity at the optimum of the ELBO).
    """
    thetas = loc + points @ scale_tril.T
    values, grads = jax.vmap(jax.value_and_grad(log_density))(thetas)
    g = jnp.mean(grads, axis=0)
    cross = grads.T @ points / points.shape[0]  # E[grad eps^T], (D, D)
    m = -scale_tril.T @ cross
    return jnp.mean(values), g, 0.5 * (m + m.T)


def natural_gradient_step(
    loc: jax.Array,
    scale_tril: jax.Array,
    g: jax.Array,
    m: jax.Array,
    rho_loc: jax.Array,
    rho_prec: jax.Array,
    *,
    full_rank: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """One step of the Bayesian learning rule for a Gaussian, in whitened coordinates.

    The new precision is ``L^{-T} A L^{-1}`` with ``A = (1 - rho_prec) I + rho_prec M``, so the new
    factor is ``L chol(A^{-1})`` (a product of lower-triangular matrices). Where ``A`` is not
    positive definite (a non-concave log density or a noisy estimate) its diagonal, floored at
    a small positive value, is used instead. A diagonal family uses the diagonal of ``M`` only.

    Returns:
        ``(loc', scale_tril')``.
    """
    dim = loc.shape[0]
    eye = jnp.eye(dim, dtype=loc.dtype)
    if not full_rank:
        m = jnp.diag(jnp.diag(m))
    a = (1.0 - rho_prec) * eye + rho_prec * m
    chol_a = linalg.cholesky(a)
    fallback = jnp.diag(jnp.sqrt(jnp.maximum(jnp.diag(a), 1e-3)))
    chol_a = jnp.where(jnp.all(jnp.isfinite(chol_a)), chol_a, fallback)
    a_inv = linalg.cho_solve(chol_a, eye)
    new_tril = scale_tril @ linalg.cholesky(0.5 * (a_inv + a_inv.T))
    new_loc = loc + rho_loc * (new_tril @ (new_tril.T @ g))
    return new_loc, new_tril


def laplace_start(
    state: IterativeState,
    log_density: Callable[[jax.Array], jax.Array],
    *,
    num_steps: int = 8,
    full_rank: bool = True,
) -> IterativeState:
    """Move a state's Gaussians to the Laplace fit of one mini-batch's scaled log density.

    The first pass linearizes the model at the cubature points of the running Gaussian. From a
    wide prior those points reach far into the tails (``+-sqrt(D)`` prior SDs), where a
    likelihood can be orders of magnitude sharper than at the posterior (a noise scale drawn
    near zero), and the first averaged curvature then overshoots; measured on the README's
    unknown-noise regression (N = 20,000, 20 mini-batches): 3 of 4 keys diverged. Starting from
    the damped Newton fit of the first mini-batch (the likelihood scaled to the whole data set)
    puts the points where the posterior is. For a Gaussian posterior the first pass is exact
    from any start, so nothing is lost there. Where the fit is not finite the state is kept.

    Args:
        state: the initial state (its running Gaussian is the Newton steps' start).
        log_density: ``u (D,) -> scalar``, the mini-batch's log joint, likelihood scaled.
        num_steps: damped Newton steps.
        full_rank: keep the full Laplace covariance (True) or its diagonal.
    """
    fit = newton_laplace(log_density, jax.lax.stop_gradient(state.run_loc), num_steps=num_steps)
    loc, tril = jax.lax.stop_gradient((fit.loc, fit.scale_tril))
    if not full_rank:
        tril = jnp.diag(jnp.sqrt(jnp.sum(tril**2, axis=-1)))
    finite = jnp.all(jnp.isfinite(loc)) & jnp.all(jnp.isfinite(tril))
    loc = jnp.where(finite, loc, state.run_loc)
    tril = jnp.where(finite, tril, state.run_scale_tril)
    return state._replace(loc=loc, scale_tril=tril, run_loc=loc, run_scale_tril=tril,
                          stale_mean=jnp.zeros_like(state.stale_mean),
                          stale_second=jnp.zeros_like(state.stale_second))


def schedule_position(step: jax.Array, steps_per_pass: jax.Array):
    """``(j, pass_index)``: position of mini-batch ``step`` within its pass, and the pass."""
    return step % steps_per_pass, step // steps_per_pass


def base_schedule(step: jax.Array, steps_per_pass: jax.Array) -> jax.Array:
    """The base step size: ``1/(j+1)`` in the first pass, ``1/(j+1+floor(P/2))`` later.

    Later passes keep a third of the weight on the previous pass's estimate (at the pass's end):
    restarting the average (``1/(j+1)``) forgets stale linearization points fastest, which is best
    for large data sets, while keeping half damps the noise of linearizing at the early, noisy
    states of a pass, which matters for moderate ones; this compromise was measured on logistic
    regression (N = 100 to 10^4). With ``P = 1`` (the whole data set per step) it is ``1``, the
    Newton step of Gaussian variational inference.
    """
    j, pass_index = schedule_position(step, steps_per_pass)
    denominator = j + 1 + jnp.where(pass_index > 0, steps_per_pass // 2, 0)
    return 1.0 / denominator.astype(jnp.float32)


def _features(z, m, step, steps_per_pass, fill):
    j, pass_index = schedule_position(step, steps_per_pass)
    dtype = z.dtype
    p = steps_per_pass.astype(dtype)
    dim = z.shape[0]
    off_diagonal = jnp.sqrt(jnp.sum((m - jnp.diag(jnp.diag(m))) ** 2)) / dim
    schedule = jnp.stack(
        [
            1.0 / (j + 1).astype(dtype),
            j.astype(dtype) / p,
            1.0 / p,
            (pass_index == 0).astype(dtype),
            (pass_index >= 2).astype(dtype),
            fill,
        ]
    )
    return jnp.concatenate(
        [jnp.arcsinh(z), jnp.arcsinh(jnp.diag(m) - 1.0), off_diagonal[None], schedule]
    )


def build_kernel(
    log_density_fn: Callable,
    tokens_fn: Callable,
    *,
    prior: tuple[jax.Array, jax.Array],
    full_rank: bool = True,
):
    """Build the pure ``(init, step)`` pair of the iterative update.

    Args:
        log_density_fn: ``(u (D,), batch_arguments, batch_mask (m,), scale) -> scalar``: the log
            joint density of a mini-batch in unconstrained space (prior and log-Jacobian counted
            once, the likelihood of the real observations multiplied by ``scale``).
        tokens_fn: ``(batch_arguments, batch_mask) -> tokens (m, token_dim)``, standardized and
            zero on padded rows (what the update network's encoder reads).
        prior: ``(loc (D,), sd (D,))``, the prior's moments in the unconstrained space (the frame
            in which the readout network sees the location).
        full_rank: full-rank curvature (True) or its diagonal only (a diagonal family).

    Returns:
        ``init(loc, scale_tril, memory_size) -> IterativeState`` and
        ``step(key, network, state, batch_arguments, batch_mask, steps_per_pass)
        -> (IterativeState, IterativeInfo)``, where ``network`` is an
        :class:`~amortized_ppl.iterative.network.UpdateNetwork` and ``steps_per_pass`` (``P``,
        int) is the number of mini-batches that make one pass over the data set.
    """

    def init(loc, scale_tril, memory_size: int) -> IterativeState:
        loc = jnp.asarray(loc)
        scale_tril = jnp.asarray(scale_tril, loc.dtype)
        dim = loc.shape[0]
        return IterativeState(
            loc,
            scale_tril,
            loc,
            scale_tril,
            jnp.zeros((memory_size,), loc.dtype),
            jnp.zeros((), jnp.int32),
            jnp.zeros((dim,), loc.dtype),
            jnp.zeros((dim, dim), loc.dtype),
        )

    def step(key, network, state: IterativeState, batch_arguments, batch_mask, steps_per_pass):
        steps_per_pass = jnp.asarray(steps_per_pass, jnp.int32)
        loc = jax.lax.stop_gradient(state.run_loc)
        tril = jax.lax.stop_gradient(state.run_scale_tril)
        scale = steps_per_pass.astype(loc.dtype)
        points = cubature_points(key, loc.shape[0], loc.dtype)

        def log_density(u):
            return log_density_fn(u, batch_arguments, batch_mask, scale)

        value, g, m = jax.lax.stop_gradient(curvature(log_density, loc, tril, points))
        z = tril.T @ g
        fill = jnp.mean(batch_mask.astype(loc.dtype))
        features = _features(z, m, state.step, steps_per_pass, fill)
        tokens = tokens_fn(batch_arguments, batch_mask)
        memory = network(tokens, batch_mask, features, state.memory)
        dim = loc.shape[0]
        # The base schedule, in every pass. The network once corrected it from the second pass
        # on (how much of the previous pass to keep); in issue 17's first ablation run (not kept)
        # those learned step sizes made later passes worse than the base, so the update's
        # learned part is the readout alone and the running Gaussian is the base rule's.
        rho_loc = rho_prec = base_schedule(state.step, steps_per_pass).astype(loc.dtype)
        run_loc, run_tril = natural_gradient_step(
            state.run_loc, state.run_scale_tril, g, m, rho_loc, rho_prec, full_rank=full_rank
        )
        stale_mean, stale_second = track_staleness(
            state.stale_mean, state.stale_second, jax.lax.stop_gradient(run_loc) - loc, rho_prec)
        # The readout: the running Gaussian, corrected from the staleness of its linearizations
        # (the module's docstring says why); zero output is the running Gaussian itself.
        inputs, kappa = readout_features(features, run_loc, run_tril, stale_mean, stale_second,
                                         prior)
        inputs = jnp.concatenate([inputs, memory])
        # A trust region: tanh bounds the correction to kappa whitened SDs per coordinate (and
        # SD factors within e^{+-kappa}), so inputs outside the training range (another N, another
        # staleness) cannot throw the readout further than the staleness it corrects; issue 17's
        # unbounded readout lost to the base where it extrapolated (d = 20 at N = 10^3).
        shift = kappa * jnp.tanh(network.correct(inputs))
        readout_loc = run_loc + run_tril @ shift[:dim]
        readout_tril = run_tril * jnp.exp(shift[dim:])[None, :]
        entropy = jnp.sum(jnp.log(jnp.abs(jnp.diag(tril)))) + 0.5 * dim * jnp.log(
            2 * jnp.pi * jnp.e
        )
        info = IterativeInfo(
            elbo=value + entropy,
            grad_norm=jnp.linalg.norm(z),
            curvature_gap=jnp.linalg.norm(m - jnp.eye(dim, dtype=m.dtype)) / jnp.sqrt(dim),
            rho_loc=rho_loc,
            rho_prec=rho_prec,
            num_real=jnp.sum(batch_mask),
            skipped=jnp.zeros((), bool),
        )
        new_state = IterativeState(
            readout_loc, readout_tril, run_loc, run_tril, memory, state.step + 1, stale_mean,
            stale_second,
        )
        # The driver's policy inside the scan: a step whose update is not finite (an overflowing
        # density where the cubature points landed) is skipped and the state kept, so one bad
        # mini-batch cannot turn the posterior into NaN.
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(
            new_state) if jnp.issubdtype(v.dtype, jnp.floating)]))
        kept = state._replace(step=state.step + 1)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
        return new_state, info._replace(skipped=~finite)

    return init, step
