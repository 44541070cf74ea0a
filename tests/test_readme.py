"""The README's quickstart code blocks run as written.

Every ```python block of the Quickstart section is executed in order in one namespace, verbatim
but for two things a reader supplies or would wait for: ``x`` and ``y`` (a new data set, which
the README leaves to the reader) are defined first, and training runs 40 steps instead of the
default 2,000 (the demo and the notebooks check accuracy; this checks that the code runs).
"""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Quickstart"):text.index("## Measured")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_quickstart_has_its_blocks():
    blocks = quickstart_blocks()
    assert len(blocks) == 5
    assert "AutoAmortizedMultivariateNormal(model, newton_steps=8)" in blocks[0]
    assert "load_guide" in blocks[1] and "posterior_predictive" in blocks[2]
    assert "trust_ladder" in blocks[3] and "refine(" in blocks[4]


@pytest.mark.slow
def test_the_quickstart_runs(tmp_path, monkeypatch):
    import functools

    import jax

    import amortized_ppl

    monkeypatch.chdir(tmp_path)  # the composed block writes runs/linreg
    short_fit = functools.partial(amortized_ppl.fit, num_steps=40, progress=False)
    monkeypatch.setattr(amortized_ppl, "fit", short_fit)
    x = jax.random.normal(jax.random.key(10), (150, 8))
    y = x @ jax.numpy.linspace(-1.0, 1.0, 8) + 0.3 + 0.5 * jax.random.normal(jax.random.key(11),
                                                                              (150,))
    namespace = {"x": x, "y": y}
    for block in quickstart_blocks():
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["y_rep"].shape == (500, 150)  # the predictive block's draws
    assert {"log_likelihood", "posterior_predictive"} <= set(namespace["idata"].groups())
    assert namespace["draws"]["w"].shape == (1000, 8)  # the iterative block's draws
    assert namespace["out"].reason in ("done", "converged")
    assert set(namespace["ladder"].paths) <= {"amortized", "corrected", "nuts"}
    assert os.path.isdir(tmp_path / "runs" / "linreg")
