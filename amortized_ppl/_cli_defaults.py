"""The demo's and the diagnose job's settings, importable without JAX.

The command line reads its defaults from here before it parses, so that ``amortized-ppl --help``
imports no JAX (``amortized_ppl.demo`` and ``amortized_ppl.diagnose`` import it at the top). The
checks in ``checked()`` import their helpers when called. :mod:`amortized_ppl.demo` and
:mod:`amortized_ppl.diagnose` take their settings from here.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DemoConfig", "DiagnoseConfig", "OOD_LEVEL"]

OOD_LEVEL = 0.01  # the out-of-distribution detector's flagging level


class DemoConfig(NamedTuple):
    """Settings of the demo; the defaults take several minutes on a 2-core CPU."""

    noise: str = "known"  # "known": closed-form reference; "unknown": NUTS reference only
    loss: str = "mixed"
    num_steps: int = 3000
    train_seconds: float = 150.0
    batch_size: int = 64
    newton_steps: int = 8
    num_features: int = 8
    num_obs: tuple[int, int] = (10, 200)
    num_test: int = 100
    num_nuts: int = 5
    num_draws: int = 1000
    seed: int = 0
    out: str = "demo_output"
    progress: bool = True
    diagnose: bool = True  # run the trust suite (SBC, k-hat, OOD, ladder) after training
    num_sbc: int = 1000
    num_ood: int = 20

    def checked(self) -> "DemoConfig":
        """This config, or a ``ValueError`` naming the first setting that cannot run."""
        from amortized_ppl._checks import check_int, check_positive_float
        from amortized_ppl.simulate import check_num_obs

        for name, choices in (
            ("noise", ("known", "unknown")),
            ("loss", ("forward_kl", "elbo", "mixed")),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {getattr(self, name)!r}.")
        for name, minimum in (
            ("num_steps", 1),
            ("batch_size", 1),
            ("newton_steps", 0),
            ("num_features", 1),
            ("num_test", 1),
            ("num_nuts", 0),
            ("num_draws", 2),
            ("seed", 0),
            ("num_sbc", 50),  # sbc refuses fewer data sets
            ("num_ood", 1),
        ):
            check_int(getattr(self, name), name, minimum)
        check_positive_float(self.train_seconds, "train_seconds")
        check_num_obs(self.num_obs)
        if self.num_nuts > self.num_test:
            raise ValueError(
                f"num_nuts: expected at most num_test={self.num_test}, got {self.num_nuts}."
            )
        return self


class DiagnoseConfig(NamedTuple):
    """Sizes of the diagnose job; the defaults take a few minutes on a 2-core CPU."""

    num_sbc: int = 1000
    sbc_draws: int = 100
    num_in: int = 100
    num_ood: int = 20
    ood_num_obs: int = 100
    num_draws: int = 1000
    num_reference: int = 3
    num_ood_simulations: int = 2000
    reference_warmup: int = 500
    reference_samples: int = 1000
    seed: int = 1
    progress: bool = True

    def checked(self) -> "DiagnoseConfig":
        """This config, or a ``ValueError`` naming the first setting that cannot run."""
        from amortized_ppl._checks import check_int
        from amortized_ppl.diagnostics.ood import simulations_for_level

        for name, minimum in (
            ("num_sbc", 50),  # sbc refuses fewer data sets
            ("sbc_draws", 2),
            ("num_in", 1),
            ("num_ood", 1),
            ("ood_num_obs", 1),
            ("num_draws", 2),
            ("num_reference", 0),
            ("num_ood_simulations", 200),
            ("reference_warmup", 1),
            ("reference_samples", 2),
            ("seed", 0),
        ):
            check_int(getattr(self, name), name, minimum)
        if self.num_reference > self.num_in:
            raise ValueError(
                f"num_reference: expected at most num_in={self.num_in}, got {self.num_reference}."
            )
        # The detector's level must be reachable with this many simulations (fit_ood_detector
        # would refuse it only after the SBC had run).
        needed = simulations_for_level(OOD_LEVEL)
        if self.num_ood_simulations < needed:
            raise ValueError(
                f"num_ood_simulations: {self.num_ood_simulations} simulations cannot give a "
                f"p-value below the level {OOD_LEVEL}; use at least {needed}."
            )
        return self
