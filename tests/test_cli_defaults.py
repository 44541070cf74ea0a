"""The command line parses without JAX: ``import amortized_ppl`` is lazy (PEP 562) and the
settings of the demo and the diagnose job live in ``amortized_ppl._cli_defaults``."""

import subprocess
import sys

import pytest

from amortized_ppl import _cli_defaults, demo, diagnose

PARSE = """
import sys
from amortized_ppl.cli import main
for argv in (["--help"], ["--version"], ["train", "--help"], ["sample", "--help"],
             ["diagnose", "--help"], ["benchmark", "--help"], ["demo", "--help"]):
    try:
        main(argv)
    except SystemExit as exit_:
        assert exit_.code == 0, (argv, exit_.code)
heavy = sorted(name for name in ("jax", "jaxlib", "numpyro", "equinox", "optax", "numpy")
               if name in sys.modules)
print("HEAVY", heavy)
"""


def test_parsing_help_and_version_imports_no_jax():
    run = subprocess.run([sys.executable, "-c", PARSE], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "HEAVY []", run.stdout[-500:]


def test_the_jobs_take_their_settings_from_one_place():
    assert demo.DemoConfig is _cli_defaults.DemoConfig
    assert diagnose.DiagnoseConfig is _cli_defaults.DiagnoseConfig


@pytest.mark.parametrize("config,name", [
    (_cli_defaults.DemoConfig(num_test=3, num_nuts=5), "num_nuts"),
    (_cli_defaults.DiagnoseConfig(num_ood_simulations=200), "num_ood_simulations"),
    (_cli_defaults.DemoConfig(num_steps=0), "num_steps"),
    (_cli_defaults.DiagnoseConfig(num_sbc=20), "num_sbc"),  # SBC needs 50 data sets
])
def test_settings_that_cannot_run_are_refused_by_name(config, name):
    with pytest.raises(ValueError, match=name):
        config.checked()
    assert _cli_defaults.DemoConfig().checked() == _cli_defaults.DemoConfig()
    assert _cli_defaults.DiagnoseConfig().checked() == _cli_defaults.DiagnoseConfig()
