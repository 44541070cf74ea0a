"""The package's lazy exports (PEP 562): every public name resolves, importing it starts no JAX,
and a public function keeps its name over a submodule of the same name."""

import subprocess
import sys

import amortized_ppl


def test_every_public_name_resolves():
    for name in amortized_ppl.__all__:
        assert getattr(amortized_ppl, name) is not None, name


def test_a_function_named_like_its_module_stays_the_function():
    import amortized_ppl.simulation_budget  # noqa: F401  (the submodule, imported first)
    from amortized_ppl import simulation_budget
    from amortized_ppl.simulation_budget import SimulationBudget

    assert callable(simulation_budget) and not isinstance(simulation_budget, type(sys))
    assert SimulationBudget is amortized_ppl.SimulationBudget


def test_importing_the_package_starts_no_jax():
    code = "import sys, amortized_ppl; print('jax' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr
