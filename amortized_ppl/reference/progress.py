"""A host-side progress bar for the reference sampler, driven from compiled code.

The compiled program reports through :func:`jax.debug.callback`: warm-up completes in one tick,
then sampling advances every ``num_samples // 20`` transitions.
"""

from __future__ import annotations

import jax

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar over ``num_warmup + num_samples`` steps, opened and closed on the host.

    Args:
        num_warmup: Warm-up steps per chain.
        num_samples: Post-warm-up transitions per chain.
    """

    def __init__(self, num_warmup: int, num_samples: int):
        self.num_warmup = num_warmup
        self.num_samples = num_samples
        self.print_every = max(1, num_samples // 20)
        self.bar = None

    def open(self) -> None:
        """Show a fresh bar (host side, before the program runs)."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.num_warmup + self.num_samples, desc="NUTS reference")

    def close(self) -> None:
        """Close the bar, if open."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def update_to(self, num_done) -> None:
        """Move the bar to ``num_done`` steps (host side; ignored while closed)."""
        if self.bar is not None:
            self.bar.update(int(num_done) - self.bar.n)

    def warmup_done(self, token: jax.Array) -> None:
        """In compiled code: mark warm-up as done once ``token`` (a warm-up output) is computed."""
        jax.debug.callback(lambda _: self.update_to(self.num_warmup), token)

    def sampled(self, num_done: jax.Array) -> None:
        """In compiled code: report ``num_done`` transitions, every ``print_every`` and at the end."""
        jax.lax.cond(
            (num_done % self.print_every == 0) | (num_done == self.num_samples),
            lambda: jax.debug.callback(lambda n: self.update_to(self.num_warmup + n), num_done),
            lambda: None,
        )
