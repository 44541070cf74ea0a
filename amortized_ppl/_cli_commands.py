"""The command line's jobs: ``train``, ``sample``, ``diagnose``, ``benchmark`` and ``demo``.

Each job takes the parsed arguments of :func:`amortized_ppl.cli.build_parser` and raises
``ValueError``, ``TypeError`` or ``OSError`` for a user error (the command line prints one line).

A training run folder (``amortized-ppl train --out RUN``) holds ``checkpoint/`` (written by
:func:`~amortized_ppl.checkpoint.save_params`) and ``train.json``: the command's settings, with
the import paths of the model and of its design function, from which ``sample``, ``diagnose`` and
``benchmark`` rebuild the guide (``--model``/``--design`` override them, e.g. after a module
moved). ``diagnose`` and ``benchmark`` also take the demo's folder, which has no ``train.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from amortized_ppl._checks import check_int, check_output_dir, check_positive_float
from amortized_ppl._cli_data import check_draws_path, read_data, write_draws
from amortized_ppl._cli_imports import load_callable, normalize_import_path
from amortized_ppl._version import __version__
from amortized_ppl.checkpoint import check_replaceable, load_guide, save_params
from amortized_ppl.data import model_signature
from amortized_ppl.guides import (
    AutoAmortizedFlow,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
)
from amortized_ppl.train import fit

__all__ = [
    "CHECKPOINT_DIR",
    "COMMANDS",
    "SETTINGS_FILE",
    "LoadedRun",
    "benchmark",
    "demo",
    "diagnose",
    "load_run",
    "read_settings",
    "sample",
    "train",
    "user_functions",
]

SETTINGS_FILE = "train.json"
CHECKPOINT_DIR = "checkpoint"


class LoadedRun(NamedTuple):
    """A run folder's guide, ready to sample and to check.

    Attributes:
        guide, params: the trained guide and its parameters.
        design_fn: the design function (None when not asked for).
        num_obs: the training range of data-set sizes ``(low, high)``.
        exact_fn: the exact posterior's moments (the demo with known noise), else None.
    """

    guide: Any
    params: Any
    design_fn: Callable | None
    num_obs: tuple[int, int]
    exact_fn: Callable | None = None


def _log(args, *parts) -> None:
    if not getattr(args, "quiet", False):
        print(*parts, flush=True)


# ------------------------------------------------------------------------------ run folders
def read_settings(run: Path) -> dict:
    """The ``train.json`` of a run folder (``{}`` when there is none)."""
    file = Path(run) / SETTINGS_FILE
    if not file.is_file():
        return {}
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{file}: unreadable ({error}); rerun train or pass --model and --design."
        ) from None
    if not isinstance(settings, dict):
        raise ValueError(
            f"{file}: expected a JSON object of settings, got {type(settings).__name__}."
        )
    return settings


def _user_function(run: Path, settings: dict, given: str | None, what: str) -> Callable:
    """The model or design function: ``--model``/``--design`` if given, else from train.json."""
    if given is not None:
        return load_callable(given, f"--{what}")
    stored = settings.get(what)
    if not isinstance(stored, str):
        raise ValueError(
            f"--{what}: {run} has no {SETTINGS_FILE} naming the {what} (not a run folder of "
            f"`amortized-ppl train`); pass --{what} module:function."
        )
    return load_callable(
        stored, f"the {what} {stored!r} in {run / SETTINGS_FILE} (override it with --{what})"
    )


def user_functions(
    run: str | Path,
    *,
    model: str | None = None,
    design: str | None = None,
    need_design: bool = True,
) -> tuple[Callable, Callable | None]:
    """The model and design function of a run folder: ``--model``/``--design`` when given, else
    the import paths in its ``train.json`` (the design function only if ``need_design``)."""
    run = Path(run)
    settings = read_settings(run)
    model_fn = _user_function(run, settings, model, "model")
    design_fn = _user_function(run, settings, design, "design") if need_design else None
    return model_fn, design_fn


def load_run(run: str | Path, *, model: str | None = None, design: str | None = None) -> LoadedRun:
    """Rebuild the guide of a ``train`` run folder, or of a checkpoint saved with ``save_params``
    in ``RUN/checkpoint`` when ``model`` and ``design`` are given."""
    model_fn, design_fn = user_functions(run, model=model, design=design)
    guide, params = load_guide(Path(run) / CHECKPOINT_DIR, model_fn, design_fn=design_fn)
    return LoadedRun(guide, params, design_fn, tuple(guide.problem.num_obs))


def _load_for_checks(args) -> LoadedRun:
    """The guide of a ``train`` run folder (or of ``--model``/``--design``), else the demo's."""
    run = Path(args.run)
    if args.model or args.design or (run / SETTINGS_FILE).is_file():
        return load_run(run, model=args.model, design=args.design)
    from amortized_ppl.demo import load_demo

    guide, params, config, design_fn, exact_fn = load_demo(run)
    return LoadedRun(guide, params, design_fn, tuple(config.num_obs), exact_fn)


# ------------------------------------------------------------------------------ train
def _build_guide(name: str, model: Callable, newton_steps: int):
    guides = {
        "normal": AutoAmortizedNormal,
        "mvn": AutoAmortizedMultivariateNormal,
        "flow": AutoAmortizedFlow,
    }
    if name not in guides:
        raise ValueError(f"--guide: expected one of {tuple(guides)}, got {name!r}.")
    return guides[name](model, newton_steps=newton_steps)


def _train_settings(args) -> dict:
    """The command's settings as stored in train.json, checked."""
    if args.train_seconds is not None:
        check_positive_float(args.train_seconds, "--train-seconds")
    return {
        "model": normalize_import_path(args.model, "--model"),
        "design": normalize_import_path(args.design, "--design"),
        "num_obs": list(args.num_obs),
        "guide": args.guide,
        "newton_steps": check_int(args.newton_steps, "--newton-steps", 0),
        "loss": args.loss,
        "steps": check_int(args.steps, "--steps"),
        "train_seconds": args.train_seconds,
        "batch_size": check_int(args.batch_size, "--batch-size"),
        "learning_rate": check_positive_float(args.learning_rate, "--learning-rate"),
        "seed": check_int(args.seed, "--seed", 0),
    }


def train(args) -> None:
    """``amortized-ppl train``: fit a guide of the user's model and save the run folder."""
    settings = _train_settings(args)
    model = load_callable(args.model, "--model")
    design = load_callable(args.design, "--design")
    out = check_output_dir(args.out, "--out")
    checkpoint = out / CHECKPOINT_DIR
    if checkpoint.exists():
        check_replaceable(checkpoint)  # refuse before training, not after
    guide = _build_guide(args.guide, model, settings["newton_steps"])
    _log(
        args,
        f"Training {type(guide).__name__} on {settings['model']} ({args.loss} loss, "
        f"{args.steps} steps)...",
    )
    result = fit(
        jax.random.key(settings["seed"]),
        guide,
        design_fn=design,
        num_obs=args.num_obs,
        loss=args.loss,
        num_steps=settings["steps"],
        batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"],
        progress=not args.quiet,
        max_seconds=args.train_seconds,
    )
    if result.reason == "interrupt":
        _log(args, f"Training interrupted; nothing written to {out}/.")
        raise KeyboardInterrupt
    losses = np.asarray(result.losses)
    finite = losses[np.isfinite(losses)]
    record = {
        **settings,
        "steps_done": int(losses.shape[0]),
        "seconds": float(result.seconds),
        "final_loss": float(np.mean(finite[-50:])) if finite.size else None,
        "stopped": result.reason,
        "amortized_ppl_version": __version__,
    }
    save_params(checkpoint, guide, result.params, metadata={"train": record})
    (out / SETTINGS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _log(
        args,
        f"Trained {record['steps_done']} steps in {record['seconds']:.1f} s (final loss "
        f"{record['final_loss']}); wrote {checkpoint}/ and {out / SETTINGS_FILE}.",
    )


# ------------------------------------------------------------------------------ sample
def _check_data_arguments(guide, data: dict, where: str) -> None:
    missing = [name for name in guide.problem.data_arguments if name not in data]
    if missing:
        raise ValueError(
            f"--data: {where} gives no values for {', '.join(map(repr, missing))} (the model's "
            f"data arguments: {', '.join(guide.problem.data_arguments)})."
        )


def sample(args) -> None:
    """``amortized-ppl sample``: posterior draws for the data set in a file."""
    num_samples = check_int(args.num_samples, "--num-samples")
    seed = check_int(args.seed, "--seed", 0)
    out = check_draws_path(args.out)
    model_fn, _ = user_functions(args.run, model=args.model, need_design=False)
    data = read_data(args.data, list(model_signature(model_fn).parameters))  # before loading
    guide, params = load_guide(Path(args.run) / CHECKPOINT_DIR, model_fn)
    _check_data_arguments(guide, data, args.data)
    _, mask, is_batch = guide.prepare(**data)  # refuses data that do not fit, before sampling
    check_draws_path(out, num_datasets=mask.shape[0] if is_batch else None)
    draws = guide.sample_posterior(
        jax.random.key(seed), params, **data, sample_shape=(num_samples,)
    )
    observed = (
        None
        if is_batch
        else {site: data[arg] for site, arg in guide.problem.spec.observed.items() if arg in data}
    )
    write_draws(out, draws, observed_data=observed)
    sets = f"{mask.shape[0]} data sets" if is_batch else f"{mask.shape[1]} observations"
    print(f"Wrote {num_samples} posterior draws of {', '.join(draws)} for {sets} to {out}.")


# ------------------------------------------------------------------------------ diagnose
def diagnose(args) -> None:
    """``amortized-ppl diagnose``: the trust suite on a run folder's guide."""
    from amortized_ppl.diagnose import DiagnoseConfig, run_diagnose

    checks = DiagnoseConfig(
        num_sbc=args.num_sbc,
        num_in=args.num_in,
        num_ood=args.num_ood,
        num_reference=args.num_reference,
        num_ood_simulations=args.num_ood_simulations,
        seed=args.seed,
        progress=not args.quiet,
    )
    if args.ood_num_obs is not None:
        checks = checks._replace(ood_num_obs=args.ood_num_obs)
    checks = checks.checked()
    loaded = _load_for_checks(args)
    if args.ood_num_obs is None:
        # Out-of-distribution data sets no larger than the guide takes (a guide trained on at
        # most 20 observations refuses 100).
        checks = checks._replace(ood_num_obs=min(checks.ood_num_obs, loaded.num_obs[1]))
    out = check_output_dir(Path(args.out) if args.out else Path(args.run) / "diagnose")
    run_diagnose(
        loaded.guide,
        loaded.params,
        design_fn=loaded.design_fn,
        num_obs=loaded.num_obs,
        out=out,
        config=checks,
        exact_fn=loaded.exact_fn,
    )


# ------------------------------------------------------------------------------ benchmark
def benchmark(args) -> None:
    """``amortized-ppl benchmark``: the guide against NUTS on a few simulated data sets."""
    from amortized_ppl._cli_benchmark import format_benchmark, run_benchmark

    sizes = {
        name: check_int(getattr(args, name), f"--{name.replace('_', '-')}", minimum)
        for name, minimum in (
            ("num_datasets", 1),
            ("num_samples", 10),
            ("num_warmup", 1),
            ("num_chains", 2),
            ("seed", 0),
        )
    }
    if args.num_obs is not None:
        check_int(args.num_obs, "--num-obs")
    loaded = _load_for_checks(args)
    out = Path(args.out) if args.out else Path(args.run) / "benchmark.json"
    check_output_dir(out.parent, "--out")
    num_obs = loaded.num_obs[1] if args.num_obs is None else args.num_obs
    report = run_benchmark(
        jax.random.key(sizes.pop("seed")),
        loaded.guide,
        loaded.params,
        loaded.design_fn,
        num_obs=num_obs,
        progress=not args.quiet,
        **sizes,
    )
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _log(args, format_benchmark(report))
    _log(args, f"Wrote {out}.")


# ------------------------------------------------------------------------------ demo
def demo(args) -> None:
    """``amortized-ppl demo``: the linear-regression demo end to end."""
    from amortized_ppl.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            noise=args.noise,
            loss=args.loss,
            num_steps=args.steps,
            train_seconds=args.train_seconds,
            batch_size=args.batch_size,
            newton_steps=args.newton_steps,
            num_test=args.num_test,
            num_nuts=args.num_nuts,
            seed=args.seed,
            out=args.out,
            progress=not args.quiet,
            diagnose=not args.no_diagnose,
            num_sbc=args.num_sbc,
            num_ood=args.num_ood,
        )
    )


COMMANDS: dict[str, Callable[[Any], None]] = {
    "train": train,
    "sample": sample,
    "diagnose": diagnose,
    "benchmark": benchmark,
    "demo": demo,
}
"""Each command's job, by name."""
