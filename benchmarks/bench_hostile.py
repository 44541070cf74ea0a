"""Bad input, as a hostile new user would give it: does every public entry point say what is wrong?

Issue 15 tried 85 bad inputs across the public API, checkpoints and the command line and counted
how each went. This script is a comparable, reproducible set of cases (the original list was not
kept). Each case is a small function that calls the public API badly; the classifier records its
outcome as one of:

- ``clear_error``: an exception of an ordinary type (``ValueError``, ``TypeError``, ``KeyError``,
  ``FileNotFoundError``, ``NotImplementedError``, ``RuntimeError``, ``PermissionError``,
  ``NotADirectoryError``, ``FileExistsError`` or a subclass) whose message contains every word the
  case lists (the offending argument, site or file; case-insensitive), and which passes the case's
  extra check when it has one (e.g. a ``RefineError`` must keep the batches read before);
- ``warning``: the call returned and a ``RuntimeWarning`` naming the problem was issued (the right
  answer where a result is still useful, e.g. data outside the training range);
- ``silent_wrong``: the call returned with neither (it should have complained);
- ``obscure_crash``: any other exception, or a message without the case's words;
- ``hang``: the case ran past the per-case time limit (``--timeout``).

Command-line cases call ``amortized_ppl.cli.main([...])`` and capture stderr: the expected result
is exit code 2 and one stderr line starting with ``amortized-ppl: error:`` that names the
problem; anything else (a traceback, another exit code, several lines) counts as
``obscure_crash``, and exit code 0 as ``silent_wrong``.

Every case states the outcome it should have (``clear_error`` or ``warning``); the expectations are
what a user needs, not what the library does today, so the counts are honest.
``tests/test_hostile.py`` runs the same table and fails on any case whose outcome differs.

All cases share one small untrained guide (``AutoAmortizedNormal`` with tiny sizes on
``linear_regression.model``, set up for 10 to 50 observations); a few build their own. Usage::

    python benchmarks/bench_hostile.py                 # every case, ~2-4 minutes on 2 CPU cores
    python benchmarks/bench_hostile.py --only ckpt     # cases whose name contains "ckpt"
    python benchmarks/bench_hostile.py --out /tmp/hostile.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints

import amortized_ppl
from amortized_ppl import (
    AutoAmortizedNormal,
    AutoIterativeAmortizedNormal,
    EarlyStopping,
    GaussianFactors,
    OneShotPosterior,
    PseudoObservations,
    RefineError,
    fit,
    fit_iterative,
    fit_ood_detector,
    load_guide,
    load_params,
    refine,
    refine_stream,
    save_params,
    sbc,
    to_inference_data,
    trust_ladder,
)
from amortized_ppl.checkpoint_files import file_sha256
from amortized_ppl.diagnostics.ood import ood_features
from amortized_ppl.diagnostics.ppc import posterior_predictive_check
from amortized_ppl.models import linear_regression as lr

__all__ = ["CASES", "OUTCOMES", "Case", "Context", "classify", "main", "run_case"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "hostile.json"

OUTCOMES = ("clear_error", "warning", "silent_wrong", "obscure_crash", "hang")

CLEAR_TYPES = (ValueError, TypeError, KeyError, FileNotFoundError, NotImplementedError,
               RuntimeError, PermissionError, NotADirectoryError, FileExistsError)
"""Exception types a user can act on (subclasses count: ``RefineError`` is a ``ValueError``)."""

NUM_OBS = (10, 50)
"""The shared guide's training range of data-set sizes."""


class Case(NamedTuple):
    """One bad call.

    Attributes:
        name: ``category/what``.
        run: ``run(ctx)``, the call (its return value is ignored unless ``check`` reads it).
        expect: the right outcome, ``"clear_error"`` or ``"warning"``.
        words: what the error or warning message must contain (case-insensitive).
        check: optional ``check(error_or_None) -> str | None``: a reason the outcome is not
            acceptable although the message is (None when it is).
    """

    name: str
    run: Callable[["Context"], Any]
    expect: str
    words: tuple[str, ...]
    check: Callable[[BaseException | None], str | None] | None = None

    @property
    def category(self) -> str:
        return self.name.split("/", 1)[0]


class CliResult(NamedTuple):
    """What ``amortized-ppl ...`` did: exit code and stderr."""

    code: int
    stderr: str


class CaseTimeout(BaseException):
    """Raised by the per-case time limit (a BaseException, so no ``except Exception`` eats it)."""


# ------------------------------------------------------------------------------------ set-up
def _data(num_obs: int, seed: int = 0, num_features: int = 8):
    (x,), _ = lr.design_fn(jax.random.key(seed), num_obs, num_features)
    w = jnp.linspace(-1.0, 1.0, num_features)
    noise = 0.5 * jax.random.normal(jax.random.key(seed + 1), (num_obs,))
    return x, x @ w + 0.3 + noise


def _design2(key, num_obs):
    """Two covariates: the small models of the site and checkpoint cases."""
    return lr.design_fn(key, num_obs, 2)


def _small_guide(model, **kwargs):
    sizes = dict(hidden_size=8, summary_size=8, head_width=16, num_blocks=1)
    return AutoAmortizedNormal(model, **{**sizes, **kwargs})


def _nudged(params):
    """Parameters that differ from the initial ones, standing in for trained ones."""
    return jax.tree.map(lambda v: v + 0.01, params)


class Context:
    """What the cases share: one small untrained guide, data, a checkpoint, a scratch folder.

    Everything beyond the guide is built on first use, so a subset of the cases builds only what
    it needs.
    """

    def __init__(self, tmp: str | Path):
        self.tmp = Path(tmp)
        self.guide = _small_guide(lr.model)
        self.guide.setup(jax.random.key(0), lr.design_fn, NUM_OBS)
        self.params = self.guide.init_params()
        self.key = jax.random.key(1)
        self.x, self.y = _data(20)
        self._counter = 0

    def fresh_dir(self, name: str) -> Path:
        """A new, not yet existing path in the scratch folder."""
        self._counter += 1
        return self.tmp / f"{self._counter:03d}-{name}"

    def copy_checkpoint(self, name: str) -> Path:
        path = self.fresh_dir(name)
        shutil.copytree(self.checkpoint, path)
        return path

    @cached_property
    def checkpoint(self) -> Path:
        """The shared guide saved with (stand-in) trained parameters, no metadata."""
        return save_params(self.tmp / "checkpoint", self.guide, _nudged(self.params))

    @cached_property
    def variant_checkpoint(self) -> Path:
        """A checkpoint of ``_variant_model("normal")``, for loads into look-alike models."""
        guide = _small_guide(_variant_model("normal"))
        guide.setup(jax.random.key(0), _design2, NUM_OBS)
        return save_params(self.tmp / "variant-checkpoint", guide, _nudged(guide.init_params()))

    @cached_property
    def iterative(self):
        """A small untrained iterative guide and its parameters."""
        guide = AutoIterativeAmortizedNormal(
            lr.model, batch_size=50, num_passes=1, min_steps=2, summary_size=8, hidden_size=8,
            head_width=16, memory_size=8)
        guide.setup(jax.random.key(0), lr.design_fn, (16, 64))
        return guide, guide.init_params()

    @cached_property
    def stream(self):
        """200 observations and four mini-batches of 50."""
        x, y = _data(200, seed=3)
        return x, y, [{"x": x[i:i + 50], "y": y[i:i + 50]} for i in range(0, 200, 50)]

    @cached_property
    def detector(self):
        return fit_ood_detector(self.key, self.guide, self.params, num_simulations=400,
                                level=0.01)

    def demo_like_run(self, name: str, config: Any) -> Path:
        """A run folder whose checkpoint carries ``{"config": config}`` as its metadata."""
        run = self.fresh_dir(name)
        save_params(run / "checkpoint", self.guide, _nudged(self.params),
                    metadata={"config": config})
        return run


# ------------------------------------------------------------------------------------ models
def _improper_prior(x, y=None):
    w = numpyro.sample("w", dist.ImproperUniform(constraints.real, (), (x.shape[1],)))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)


def _discrete_latent(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    z = numpyro.sample("z", dist.Bernoulli(0.5))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w + z, 1.0), obs=y)


def _local_latent(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(x @ w + u, 1.0), obs=y)


def _growing_latent(x, y=None):
    # One offset per observation, declared outside any plate: a local latent in disguise.
    u = numpyro.sample("u", dist.Normal(0.0, 1.0).expand([x.shape[0]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(u, 1.0), obs=y)


def _no_plate(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Normal(x @ w, 1.0).to_event(1), obs=y)


def _no_observations(x):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    numpyro.deterministic("signal", x @ w)


def _simplex_weights(x, y=None):
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(x.shape[1])))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ weights, 1.0), obs=y)


def _variant_model(variant: str):
    """Look-alike models: the same ``__qualname__``, signature and (but one) latent sites.

    ``normal`` is the checkpoint's; ``student_t`` changes the likelihood's family, ``prior_scale``
    the prior's scale, ``minus_b`` the likelihood's mean (``x @ w - b``), ``extra_site`` adds a
    latent noise scale ``tau``.
    """

    def model(x, y=None):
        scale = 2.0 if variant == "prior_scale" else 1.0
        w = numpyro.sample("w", dist.Normal(0.0, scale).expand([x.shape[1]]).to_event(1))
        b = numpyro.sample("b", dist.Normal(0.0, scale))
        noise = numpyro.sample("tau", dist.HalfNormal(1.0)) if variant == "extra_site" else 0.5
        mean = x @ w - b if variant == "minus_b" else x @ w + b
        with numpyro.plate("data", x.shape[0]):
            if variant == "student_t":
                numpyro.sample("y", dist.StudentT(4.0, mean, noise), obs=y)
            else:
                numpyro.sample("y", dist.Normal(mean, noise), obs=y)

    return model


# ------------------------------------------------------------------------------------ helpers
def _sample(ctx: Context, *args, **kwargs):
    kwargs.setdefault("sample_shape", (10,))
    return ctx.guide.sample_posterior(ctx.key, ctx.params, *args, **kwargs)


def _setup(model, design=_design2, num_obs=NUM_OBS, key=None, **kwargs):
    guide = _small_guide(model, **kwargs)
    return guide.setup(jax.random.key(0) if key is None else key, design, num_obs)


def _nan_at(array, index):
    return jnp.asarray(array).at[index].set(jnp.nan)


def _stream_nan_batch(ctx: Context):
    guide, params = ctx.iterative
    _, _, batches = ctx.stream
    bad = dict(batches[2], y=_nan_at(batches[2]["y"], 7))
    return refine_stream(ctx.key, guide, params, [batches[0], batches[1], bad, batches[3]],
                         num_obs=200, batch_size=50, progress=False)


def _kept_two_batches(error: BaseException | None) -> str | None:
    if not isinstance(error, RefineError):
        return "expected a RefineError (it keeps the state refined so far)"
    result = getattr(error, "result", None)
    if result is None:
        return "the error carries no `result`"
    if result.num_steps != 2:
        return f"error.result holds {result.num_steps} batches, expected the 2 read before"
    if not bool(np.all(np.isfinite(np.asarray(result.state.loc)))):
        return "error.result's state is not finite"
    return None


def _kept_one_pass(error: BaseException | None) -> str | None:
    if not isinstance(error, RefineError):
        return "expected a RefineError (it keeps the state refined so far)"
    result = getattr(error, "result", None)
    if result is None or result.num_passes != 1:
        return "error.result does not hold the first, complete pass"
    return None


def _damaged_arrays(ctx: Context, *, update_hash: bool) -> Path:
    path = ctx.copy_checkpoint("damaged-arrays")
    arrays = path / "arrays.npz"
    if update_hash:
        arrays.write_bytes(b"this is not a zip archive" * 40)
        meta = json.loads((path / "meta.json").read_text())
        meta["sha256"] = file_sha256(arrays)
        (path / "meta.json").write_text(json.dumps(meta))
    else:
        with open(arrays, "ab") as handle:
            handle.write(b"\0junk")
    return path


def _load_without_arrays(ctx: Context):
    path = ctx.copy_checkpoint("no-arrays")
    (path / "arrays.npz").unlink()
    return load_params(path, ctx.guide)


def _load_meta_not_json(ctx: Context):
    path = ctx.copy_checkpoint("bad-meta")
    (path / "meta.json").write_text("{not json")
    return load_guide(path, lr.model)


def _save_into_foreign_directory(ctx: Context):
    path = ctx.fresh_dir("foreign")
    path.mkdir()
    (path / "notes.txt").write_text("my notes\n")
    return save_params(path, ctx.guide, _nudged(ctx.params))


def _ppc_unreachable(ctx: Context):
    problem = ctx.guide.problem
    arguments, mask, _ = ctx.guide.prepare(ctx.x, ctx.y)
    draws = jax.random.normal(ctx.key, (1, 20, problem.latent_dim))
    return posterior_predictive_check(ctx.key, problem, arguments, mask, draws, level=0.05)


def _sbc_without_design(ctx: Context):
    """SBC on a guide loaded from a checkpoint that names no importable design function."""
    path = ctx.copy_checkpoint("no-design")
    meta = json.loads((path / "meta.json").read_text())
    meta["design_import_path"] = None  # as saved from a design defined in a script
    (path / "meta.json").write_text(json.dumps(meta))
    guide, params = load_guide(path, lr.model)
    return sbc(ctx.key, guide, params, num_datasets=50, num_draws=10)


def _flag_unreachable(ctx: Context):
    arguments, mask, _ = ctx.guide.prepare(ctx.x, ctx.y)
    features = ood_features(ctx.guide.problem, ctx.guide.engine(ctx.params), arguments, mask)
    return ctx.detector.flag(features, np.asarray(mask).sum(axis=1), level=0.001)


def _svi_init_nan(ctx: Context):
    guide = _small_guide(lr.model)  # set up lazily, from the data set, as NumPyro's autoguides
    svi = numpyro.infer.SVI(lr.model, guide, numpyro.optim.Adam(1e-3), numpyro.infer.Trace_ELBO())
    return svi.init(ctx.key, ctx.x, _nan_at(ctx.y, 4))


def _call_with_batch(ctx: Context):
    x, y = jnp.stack([ctx.x, ctx.x]), jnp.stack([ctx.y, ctx.y])
    with handlers.seed(rng_seed=0):
        return ctx.guide(x, y)


def run_cli(argv: list[str]) -> CliResult:
    """``amortized-ppl *argv`` in this process: its exit code and stderr (a traceback included,
    as a user would see it)."""
    from amortized_ppl.cli import main as cli_main

    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            code = cli_main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except CaseTimeout:
            raise
        except BaseException:  # noqa: BLE001 - an uncaught error is what the user sees
            traceback.print_exc()
            code = 1
    return CliResult(int(code or 0), stderr.getvalue())


# Small settings for the command-line cases, so that a bad input the CLI accepts costs little.
_DEMO_SMALL = ["--steps", "2", "--train-seconds", "5", "--num-test", "2", "--num-nuts", "0",
               "--no-diagnose"]


def _demo(ctx: Context, *changes: str) -> CliResult:
    out = str(ctx.fresh_dir("demo"))
    return run_cli(["demo", *_DEMO_SMALL, "--out", out, *changes])


def _demo_out_is_file(ctx: Context) -> CliResult:
    target = ctx.fresh_dir("a-file")
    target.write_text("not a folder\n")
    return run_cli(["demo", *_DEMO_SMALL, "--out", str(target)])


def _diagnose(run: Path, *changes: str) -> CliResult:
    return run_cli(["diagnose", "--run", str(run), "--num-sbc", "50", "--num-in", "2",
                    "--num-ood", "2", "--num-reference", "0", *changes])


def _diagnose_meta_not_json(ctx: Context) -> CliResult:
    from amortized_ppl.demo import DemoConfig

    run = ctx.demo_like_run("damaged-meta", DemoConfig(noise="unknown")._asdict())
    meta = run / "checkpoint" / "meta.json"
    meta.write_text(meta.read_text()[:200])  # cut short, as by a full disk
    return _diagnose(run)


def _diagnose_damaged_settings(ctx: Context) -> CliResult:
    from amortized_ppl.demo import DemoConfig

    config = dict(DemoConfig(noise="unknown")._asdict(), num_obs="ten to fifty")
    return _diagnose(ctx.demo_like_run("damaged-settings", config))


def _diagnose_api_checkpoint(ctx: Context) -> CliResult:
    run = ctx.fresh_dir("api-run")
    shutil.copytree(ctx.checkpoint, run / "checkpoint")
    return _diagnose(run)


# ------------------------------------------------------------------------------------ the cases
_E, _W = "clear_error", "warning"


def _c(name, run, expect, *words, check=None) -> Case:
    return Case(name, run, expect, tuple(words), check)


CASES: tuple[Case, ...] = (
    # --- data: one data set or a batch, through every posterior entry point
    _c("data/nan_in_x", lambda c: c.guide.get_posterior(c.params, _nan_at(c.x, (3, 2)), c.y),
       _E, "x", "NaN"),
    _c("data/nan_in_y", lambda c: _sample(c, c.x, _nan_at(c.y, 5)), _E, "y", "NaN"),
    _c("data/x_wrong_num_features", lambda c: _sample(c, c.x[:, :3], c.y), _E, "x", "shape"),
    _c("data/y_as_column", lambda c: c.guide.quantiles(c.params, [0.1, 0.9], c.x, c.y[:, None]),
       _E, "y", "shape"),
    _c("data/y_shorter_than_x", lambda c: _sample(c, c.x, c.y[:-1]), _E, "y", "19"),
    _c("data/y_strings", lambda c: _sample(c, c.x, np.asarray([f"{v:.2f}" for v in c.y])),
       _E, "y"),
    _c("data/y_complex", lambda c: _sample(c, c.x, np.asarray(c.y) + 1j), _E, "y", "complex"),
    _c("data/y_missing", lambda c: _sample(c, c.x), _E, "y", "None"),
    _c("data/unknown_keyword", lambda c: _sample(c, c.x, c.y, z=1.0), _E, "z"),
    _c("data/more_obs_than_max", lambda c: _sample(c, *_data(60)), _E, "60", "max_obs"),
    _c("data/fewer_obs_than_trained", lambda c: _sample(c, *_data(5)), _W, "5 observations"),
    _c("data/y_times_1e6", lambda c: _sample(c, c.x, c.y * 1e6), _W, "y", "beyond"),
    _c("data/x_times_1e20", lambda c: _sample(c, c.x * 1e20, c.y), _W, "x", "beyond"),
    _c("data/empty_dataset", lambda c: _sample(c, c.x[:0], c.y[:0]), _E, "empty"),
    _c("data/mask_wrong_shape",
       lambda c: c.guide.median(c.params, c.x, c.y, data_mask=np.ones(19, bool)),
       _E, "data_mask", "shape"),
    _c("data/mask_all_false", lambda c: _sample(c, c.x, c.y, data_mask=np.zeros(20, bool)),
       _E, "data_mask", "all False"),
    _c("data/batch_sizes_disagree",
       lambda c: _sample(c, jnp.stack([c.x, c.x]), jnp.stack([c.y, c.y, c.y])), _E, "data sets"),
    _c("data/batch_inside_numpyro", _call_with_batch, _E, "one data set", "sample_posterior"),
    _c("data/svi_init_nan_in_y", _svi_init_nan, _E, "y", "NaN"),
    # --- sites and models: what an amortized guide cannot take, refused at set-up
    _c("sites/improper_uniform_prior", lambda c: _setup(_improper_prior), _E, "w",
       "ImproperUniform"),
    _c("sites/discrete_latent", lambda c: _setup(_discrete_latent), _E, "z", "discrete"),
    _c("sites/local_latent_in_plate", lambda c: _setup(_local_latent), _E, "u", "local"),
    _c("sites/latent_grows_with_n", lambda c: _setup(_growing_latent), _E, "u", "local"),
    _c("sites/observed_outside_plate", lambda c: _setup(_no_plate), _E, "y", "plate"),
    _c("sites/no_observed_site", lambda c: _setup(_no_observations), _E, "observed"),
    _c("sites/design_fn_returns_array",
       lambda c: _setup(lr.model, design=lambda k, n: jax.random.normal(k, (n, 2))),
       _E, "design_fn"),
    _c("sites/sample_before_setup",
       lambda c: _small_guide(lr.model).sample_posterior(c.key, c.params, c.x, c.y), _E, "set up"),
    _c("sites/quantiles_of_simplex",
       lambda c: (lambda g: g.quantiles(g.init_params(), [0.5], *_data(20, num_features=2)))(
           _setup(_simplex_weights)), _E, "quantiles", "weights"),
    # --- keys
    _c("keys/int_key", lambda c: c.guide.sample_posterior(0, c.params, c.x, c.y), _E,
       "rng_key", "jax.random.key(0)"),
    _c("keys/none_key", lambda c: c.guide.sample_posterior(None, c.params, c.x, c.y), _E,
       "rng_key", "NoneType"),
    _c("keys/float_array_key",
       lambda c: c.guide.sample_posterior(jnp.zeros(2), c.params, c.x, c.y), _E,
       "rng_key", "float32"),
    _c("keys/int_key_setup", lambda c: _small_guide(lr.model).setup(7, lr.design_fn, NUM_OBS),
       _E, "key", "7"),
    _c("keys/int_key_refine", lambda c: refine(5, *c.iterative, *c.stream[:2], progress=False),
       _E, "key"),
    # --- shapes
    _c("shapes/sample_shape_int", lambda c: _sample(c, c.x, c.y, sample_shape=5), _E,
       "sample_shape", "(5,)"),
    _c("shapes/sample_shape_float", lambda c: _sample(c, c.x, c.y, sample_shape=(2.5,)), _E,
       "sample_shape"),
    _c("shapes/quantiles_scalar", lambda c: c.guide.quantiles(c.params, 0.5, c.x, c.y), _E,
       "quantiles"),
    _c("shapes/quantiles_outside_unit",
       lambda c: c.guide.quantiles(c.params, [0.0, 0.5, 1.0], c.x, c.y), _E, "quantiles",
       "(0, 1)"),
    _c("shapes/params_of_other_prefix",
       lambda c: c.guide.sample_posterior(c.key, {"other$net$params": 0}, c.x, c.y), _E,
       "params", "amortized$net$params"),
    # --- training
    _c("train/num_steps_zero", lambda c: fit(c.key, c.guide, num_steps=0, progress=False), _E,
       "num_steps"),
    _c("train/batch_size_zero",
       lambda c: fit(c.key, c.guide, num_steps=2, batch_size=0, progress=False), _E,
       "batch_size"),
    _c("train/negative_learning_rate",
       lambda c: fit(c.key, c.guide, num_steps=2, learning_rate=-1e-3, progress=False), _E,
       "learning_rate"),
    _c("train/nan_learning_rate",
       lambda c: fit(c.key, c.guide, num_steps=2, learning_rate=math.nan, progress=False), _E,
       "learning_rate"),
    _c("train/unknown_loss",
       lambda c: fit(c.key, c.guide, num_steps=2, loss="kl", progress=False), _E, "loss", "kl"),
    _c("train/num_obs_above_max_obs",
       lambda c: fit(c.key, c.guide, num_obs=(10, 500), num_steps=2, chunk_size=1,
                     progress=False), _E, "num_obs", "50"),
    _c("train/optimizer_as_string",
       lambda c: fit(c.key, c.guide, num_steps=2, optimizer="adam", progress=False), _E,
       "optimizer"),
    _c("train/early_stopping_zero_patience",
       lambda c: fit(c.key, c.guide, num_steps=2, early_stopping=EarlyStopping(patience=0),
                     progress=False), _E, "early_stopping.patience"),
    _c("train/early_stopping_as_dict",
       lambda c: fit(c.key, c.guide, num_steps=2, early_stopping={"patience": 3},
                     progress=False), _E, "early_stopping", "EarlyStopping"),
    _c("train/factor_family_with_set_encoder",
       lambda c: OneShotPosterior(c.guide.problem, encoder="set",
                                  family=GaussianFactors(), key=c.key), _E,
       "PseudoObservations", "GaussianFactors"),
    _c("train/factor_encoder_with_newton_steps",
       lambda c: AutoAmortizedNormal(lr.model_known_noise, encoder=PseudoObservations(),
                                     newton_steps=4), _E, "newton_steps", "PseudoObservations"),
    _c("train/fit_iterative_on_one_shot_guide",
       lambda c: fit_iterative(c.key, c.guide, num_iterations=2, progress=False), _E,
       "iterative"),
    # --- checkpoints
    _c("ckpt/save_nan_params",
       lambda c: save_params(c.fresh_dir("nan"), c.guide, {c.guide.param_name: jax.tree.map(
           lambda v: v * jnp.nan, c.params[c.guide.param_name])}), _E, "NaN", "params"),
    _c("ckpt/untrained_over_trained",
       lambda c: save_params(c.copy_checkpoint("overwrite"), c.guide, c.params), _E,
       "untrained"),
    _c("ckpt/load_other_likelihood_family",
       lambda c: load_guide(c.variant_checkpoint, _variant_model("student_t")), _E,
       "model", "differs"),
    _c("ckpt/load_other_prior_scale",
       lambda c: load_guide(c.variant_checkpoint, _variant_model("prior_scale")), _E,
       "model", "differs"),
    _c("ckpt/load_other_likelihood_mean",
       lambda c: load_guide(c.variant_checkpoint, _variant_model("minus_b")), _E,
       "model", "differs"),
    _c("ckpt/load_model_with_extra_site",
       lambda c: load_guide(c.variant_checkpoint, _variant_model("extra_site")), _E, "tau"),
    _c("ckpt/load_into_other_model",
       lambda c: load_guide(c.checkpoint, lr.model_known_noise), _E, "sigma"),
    _c("ckpt/missing_directory", lambda c: load_guide(c.tmp / "no-such-run", lr.model),
       _E, "no-such-run"),
    _c("ckpt/missing_arrays_file", _load_without_arrays, _E, "arrays.npz", "missing"),
    _c("ckpt/meta_not_json", _load_meta_not_json, _E, "meta.json", "JSON"),
    _c("ckpt/arrays_hash_mismatch",
       lambda c: load_guide(_damaged_arrays(c, update_hash=False), lr.model), _E,
       "arrays.npz", "SHA-256"),
    _c("ckpt/arrays_unreadable",
       lambda c: load_params(_damaged_arrays(c, update_hash=True), c.guide), _E,
       "arrays.npz", "cannot read"),
    _c("ckpt/save_into_foreign_directory", _save_into_foreign_directory, _E, "notes.txt"),
    _c("ckpt/load_params_other_sizes",
       lambda c: load_params(c.checkpoint, _setup(lr.model, design=lr.design_fn,
                                                   hidden_size=16)), _E, "hidden_size"),
    _c("ckpt/load_params_other_setup_key",
       lambda c: load_params(c.checkpoint, _setup(lr.model, design=lr.design_fn,
                                                   key=jax.random.key(5))), _E, "statistics"),
    _c("ckpt/sbc_without_design_fn", _sbc_without_design, _E, "design_fn"),
    # --- out-of-distribution detector
    _c("ood/200_simulations_at_level_0.01",
       lambda c: fit_ood_detector(c.key, c.guide, c.params, num_simulations=200, level=0.01),
       _E, "level", "num_simulations"),
    _c("ood/flag_at_level_0.001", _flag_unreachable, _E, "level", "num_simulations"),
    _c("ood/detector_not_a_detector",
       lambda c: c.guide.with_ood_detector("yes").sample_posterior(c.key, c.params, c.x, c.y),
       _E, "detector"),
    # --- simulation-based calibration
    _c("sbc/num_datasets_below_50",
       lambda c: sbc(c.key, c.guide, c.params, num_datasets=20, num_draws=10), _E,
       "num_datasets"),
    _c("sbc/num_draws_below_10",
       lambda c: sbc(c.key, c.guide, c.params, num_datasets=100, num_draws=5), _E,
       "num_draws"),
    # --- refinement of iterative guides
    _c("refine/nan_batch_mid_stream", _stream_nan_batch, _E, "batch 2", "NaN",
       check=_kept_two_batches),
    _c("refine/one_shot_iterator_two_passes",
       lambda c: refine_stream(c.key, *c.iterative, iter(c.stream[2]), num_obs=200,
                               batch_size=50, num_passes=2, progress=False), _E,
       "iterator", "pass 2", check=_kept_one_pass),
    _c("refine/batch_size_above_data",
       lambda c: refine(c.key, *c.iterative, c.stream[0][:30], c.stream[1][:30], batch_size=50,
                        progress=False), _E, "batch_size"),
    _c("refine/one_shot_guide",
       lambda c: refine(c.key, c.guide, c.params, c.x, c.y, progress=False), _E, "iterative"),
    _c("refine/num_passes_float",
       lambda c: refine(c.key, *c.iterative, *c.stream[:2], batch_size=50, num_passes=2.5,
                        progress=False), _E, "num_passes"),
    _c("refine/stream_short_of_num_obs",
       lambda c: refine_stream(c.key, *c.iterative, c.stream[2][:3], num_obs=200, batch_size=50,
                               progress=False), _W, "num_obs", "150"),
    # --- posterior predictive checks, the trust ladder, ArviZ
    _c("ppc/unreachable_level", _ppc_unreachable, _E, "level", "draws"),
    _c("ladder/num_draws_not_multiple_of_chains",
       lambda c: trust_ladder(c.key, c.guide, c.params, c.x, c.y, num_draws=10), _E,
       "num_draws", "num_chains"),
    _c("arviz/nan_draws",
       lambda c: to_inference_data({"w": np.full((10, 3), np.nan)}), _W, "w", "NaN"),
    # --- the command line
    _c("cli/demo_num_test_0", lambda c: _demo(c, "--num-test", "0"), _E, "num_test", "0"),
    _c("cli/demo_steps_0", lambda c: _demo(c, "--steps", "0"), _E, "num_steps", "0"),
    _c("cli/demo_train_seconds_negative", lambda c: _demo(c, "--train-seconds", "-1"), _E,
       "train_seconds"),
    _c("cli/demo_out_is_a_file", _demo_out_is_file, _E, "a-file", "not a directory"),
    _c("cli/diagnose_missing_run", lambda c: _diagnose(c.tmp / "no-such-demo"), _E,
       "no-such-demo"),
    _c("cli/diagnose_api_checkpoint", _diagnose_api_checkpoint, _E, "demo"),
    _c("cli/diagnose_meta_not_json", _diagnose_meta_not_json, _E, "meta.json"),
    _c("cli/diagnose_damaged_settings", _diagnose_damaged_settings, _E, "meta.json",
       "num_obs"),
    _c("cli/diagnose_ood_simulations_200",
       lambda c: _diagnose(c.tmp / "no-such-demo", "--num-ood-simulations", "200"), _E,
       "simulations", "200"),
)


# ------------------------------------------------------------------------------------ classify
class Result(NamedTuple):
    """One case's outcome and what it saw."""

    name: str
    category: str
    expected: str
    outcome: str
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.outcome == self.expected

    def to_dict(self) -> dict:
        return {**self._asdict(), "ok": self.ok}


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])
    return str(error)


def _has_words(text: str, words: tuple[str, ...]) -> list[str]:
    """The words missing from ``text``: case-insensitive, as whole words (``y`` is not found in
    "types", nor ``steps`` in "num_steps")."""
    return [w for w in words
            if not re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", text, re.IGNORECASE)]


def classify(case: Case, error: BaseException | None, value: Any,
             caught: list[warnings.WarningMessage], timed_out: bool) -> tuple[str, str]:
    """``(outcome, detail)`` of one case from what its call raised, returned and warned."""
    if timed_out:
        return "hang", "ran past the time limit"
    if isinstance(value, CliResult):
        return _classify_cli(case, value, caught)
    if error is not None:
        text = f"{type(error).__name__}: {_message(error)}"
        if not isinstance(error, CLEAR_TYPES):
            return "obscure_crash", text
        missing = _has_words(_message(error), case.words)
        if missing:
            return "obscure_crash", f"{text} [message lacks {missing}]"
        reason = case.check(error) if case.check is not None else None
        if reason:
            return "obscure_crash", f"{text} [{reason}]"
        return "clear_error", text
    runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    naming = [m for m in runtime if not _has_words(m, case.words)]
    if naming:
        return "warning", f"RuntimeWarning: {naming[0]}"
    others = [f"{w.category.__name__}: {w.message}" for w in caught]
    return "silent_wrong", "returned normally" + (f"; warnings: {others}" if others else "")


def _classify_cli(case: Case, result: CliResult, caught) -> tuple[str, str]:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    lines += [f"{w.category.__name__}: {w.message}" for w in caught]  # printed, for a user
    shown = " | ".join(lines[-3:]) if len(lines) > 3 else " | ".join(lines)
    text = f"exit {result.code}, {len(lines)} stderr line(s): {shown}"
    if result.code == 0:
        return "silent_wrong", text
    if result.code != 2 or len(lines) != 1 or not lines[0].startswith("amortized-ppl: error:"):
        return "obscure_crash", text
    missing = _has_words(lines[0], case.words)
    if missing:
        return "obscure_crash", f"{text} [message lacks {missing}]"
    return "clear_error", text


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise :class:`CaseTimeout` after ``seconds`` (a SIGALRM timer; none off the main thread
    or where there is no SIGALRM)."""
    usable = (seconds and hasattr(signal, "SIGALRM")
              and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None))
    if not usable:
        yield
        return

    def _raise(signum, frame):
        raise CaseTimeout()

    try:
        previous = signal.signal(signal.SIGALRM, _raise)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(case: Case, ctx: Context, timeout: float | None = 300.0) -> Result:
    """Run one case and classify it."""
    error, value, timed_out = None, None, False
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _time_limit(timeout):
                value = case.run(ctx)
        except CaseTimeout:
            timed_out = True
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: BLE001 - every failure is an outcome here
            error = err
    seconds = time.perf_counter() - start
    outcome, detail = classify(case, error, value, list(caught), timed_out)
    return Result(case.name, case.category, case.expect, outcome, detail, seconds)


# ------------------------------------------------------------------------------------ report
def format_table(results: list[Result]) -> str:
    width = max(len(r.name) for r in results)
    rows = [f"{'case':<{width}}  {'expected':<11}  {'outcome':<13}  {'s':>5}  detail"]
    for r in results:
        mark = "" if r.ok else "  <-- "
        detail = " ".join(r.detail.split())
        detail = detail if len(detail) <= 150 else detail[:147] + "..."
        rows.append(f"{r.name:<{width}}  {r.expected:<11}  {r.outcome:<13}  {r.seconds:5.1f}  "
                    f"{mark}{detail}")
    return "\n".join(rows)


def counts_of(results: list[Result]) -> dict[str, int]:
    return {outcome: sum(r.outcome == outcome for r in results) for outcome in OUTCOMES}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cases = [c for c in CASES if args.only is None or args.only in c.name]
    if not cases:
        raise SystemExit(f"--only {args.only!r} matches no case.")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        ctx = Context(tmp)
        setup_seconds = time.perf_counter() - start
        results = []
        for case in cases:
            results.append(run_case(case, ctx, args.timeout))
            r = results[-1]
            print(f"[{len(results)}/{len(cases)}] {r.name}: {r.outcome} ({r.seconds:.1f} s)",
                  flush=True)
    total = time.perf_counter() - start
    counts = counts_of(results)
    print()
    print(format_table(results))
    print()
    print(f"{len(results)} cases: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f"; {sum(r.ok for r in results)} as expected; {total:.0f} s "
          f"({setup_seconds:.0f} s set-up)")
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None
        else " ".join(["bench_hostile.py", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "amortized_ppl": amortized_ppl.__version__,
            "jax": jax.__version__,
            "numpyro": numpyro.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "backend": jax.default_backend(),
        },
        "num_cases": len(results),
        "counts": counts,
        "counts_by_category": {
            category: counts_of([r for r in results if r.category == category])
            for category in dict.fromkeys(r.category for r in results)
        },
        "num_as_expected": sum(r.ok for r in results),
        "seconds": total,
        "setup_seconds": setup_seconds,
        "cases": [r.to_dict() for r in results],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {out}")
    return report


if __name__ == "__main__":
    main()
