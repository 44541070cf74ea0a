"""The ``amortized-ppl`` command line: help, and every bad argument refused before any work.

Each refusal is one ``error:`` line on stderr and exit status 2, without a traceback, and writes
nothing (issue 15: ``demo --num-test 0`` died in JAX, ``--steps 0`` gave a traceback, a run
folder with an API-saved checkpoint gave ``KeyError: 'config'``, a corrupted checkpoint a
traceback, and a read-only ``--out`` failed only after the work).
"""

import json

import jax
import pytest

from amortized_ppl.checkpoint import save_params
from amortized_ppl.cli import main
from amortized_ppl.guides import AutoAmortizedNormal
from amortized_ppl.models.linear_regression import design_fn, model_known_noise


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    """A run folder whose checkpoint was saved with save_params (not by the demo)."""
    run = tmp_path_factory.mktemp("runs") / "api"
    guide = AutoAmortizedNormal(model_known_noise, hidden_size=8, summary_size=8, head_width=8,
                                num_blocks=1)
    guide.setup(jax.random.key(0), design_fn, (5, 10))
    save_params(run / "checkpoint", guide, guide.init_params())
    return run


def _refused(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


DEMO_REFUSALS = [
    (["--num-test", "0"], "num_test"),
    (["--steps", "0"], "num_steps"),
    (["--train-seconds", "-1"], "train_seconds"),
    (["--batch-size", "0"], "batch_size"),
    (["--newton-steps", "-1"], "newton_steps"),
    (["--num-test", "3", "--num-nuts", "5"], "num_nuts"),
    (["--num-sbc", "0"], "num_sbc"),
]


@pytest.mark.parametrize("args,needle", DEMO_REFUSALS, ids=[a[0] for a, _ in DEMO_REFUSALS])
def test_demo_refuses_bad_settings_before_any_work(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    _refused(capsys, ["demo", *args, "--out", str(out), "--quiet"], needle)
    assert not out.exists()


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _refused(capsys, ["demo", "--out", str(blocker), "--quiet"], "not a directory")
    _refused(capsys, ["demo", "--out", str(blocker / "sub"), "--quiet"], "cannot be created")


def test_diagnose_refuses_an_api_checkpoint_and_damaged_files(api_run, tmp_path, capsys):
    _refused(capsys, ["diagnose", "--run", str(api_run), "--quiet"], "not written by the demo")
    damaged = tmp_path / "damaged"
    (damaged / "checkpoint").mkdir(parents=True)
    for name in ("meta.json", "arrays.npz"):
        (damaged / "checkpoint" / name).write_bytes(
            (api_run / "checkpoint" / name).read_bytes())
    (damaged / "checkpoint" / "meta.json").write_text("{not json")
    _refused(capsys, ["diagnose", "--run", str(damaged), "--quiet"], "meta.json")
    meta = json.loads((api_run / "checkpoint" / "meta.json").read_text())
    meta["metadata"] = {"config": {"noise": "known"}}  # hand-edited: fields missing
    (damaged / "checkpoint" / "meta.json").write_text(json.dumps(meta))
    _refused(capsys, ["diagnose", "--run", str(damaged), "--quiet"], "damaged")
    assert not (damaged / "diagnose").exists()


def test_diagnose_refuses_a_detector_that_could_never_flag(tmp_path, capsys):
    _refused(capsys, ["diagnose", "--run", str(tmp_path), "--num-ood-simulations", "200",
                      "--quiet"], "num_ood_simulations", "at least 400")


def test_diagnose_without_a_run_fails_clearly(tmp_path, capsys):
    assert main(["diagnose", "--run", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "amortized-ppl demo" in capsys.readouterr().err


def test_cli_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "demo" in usage and "diagnose" in usage


def test_demo_help_shows_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    for option in ("--steps", "--newton-steps", "--loss", "--no-diagnose", "--out"):
        assert option in usage, option


def test_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
