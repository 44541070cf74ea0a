"""The ``amortized-ppl`` command line: help, and every bad argument refused before any work.

Each refusal is one ``amortized-ppl: error:`` line on stderr and exit status 2, without a
traceback, and writes nothing (issue 15: ``demo --num-test 0`` died in JAX, ``--steps 0`` gave a traceback, a run
folder with an API-saved checkpoint gave ``KeyError: 'config'``, a corrupted checkpoint a
traceback, and a read-only ``--out`` failed only after the work).
"""

import argparse
import json
import shutil

import jax
import pytest

from amortized_ppl._version import __version__
from amortized_ppl.checkpoint import save_params
from amortized_ppl.cli import build_parser, main, parse_num_obs
from amortized_ppl.guides import AutoAmortizedNormal
from amortized_ppl.models.linear_regression import design_fn, model_known_noise


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    """A run folder whose checkpoint was saved with save_params (not by the demo)."""
    run = tmp_path_factory.mktemp("runs") / "api"
    guide = AutoAmortizedNormal(
        model_known_noise, hidden_size=8, summary_size=8, head_width=8, num_blocks=1
    )
    guide.setup(jax.random.key(0), design_fn, (5, 10))
    save_params(run / "checkpoint", guide, guide.init_params())
    return run


def _refused(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amortized-ppl: error: "), err
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
        (damaged / "checkpoint" / name).write_bytes((api_run / "checkpoint" / name).read_bytes())
    (damaged / "checkpoint" / "meta.json").write_text("{not json")
    _refused(capsys, ["diagnose", "--run", str(damaged), "--quiet"], "meta.json")
    meta = json.loads((api_run / "checkpoint" / "meta.json").read_text())
    meta["metadata"] = {"config": {"noise": "known"}}  # hand-edited: fields missing
    (damaged / "checkpoint" / "meta.json").write_text(json.dumps(meta))
    _refused(capsys, ["diagnose", "--run", str(damaged), "--quiet"], "damaged")
    assert not (damaged / "diagnose").exists()


def test_diagnose_refuses_a_detector_that_could_never_flag(tmp_path, capsys):
    _refused(
        capsys,
        ["diagnose", "--run", str(tmp_path), "--num-ood-simulations", "200", "--quiet"],
        "num_ood_simulations",
        "at least 400",
    )


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
        main(["frobnicate"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------ parsing and help (issue 23)
def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_of_every_command_has_help_and_shows_its_default():
    commands = _subparsers(build_parser())
    assert set(commands) == {"train", "sample", "diagnose", "benchmark", "demo"}
    for name, command in commands.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            shown = action.default is not None and action.default is not False
            if shown and not action.required:
                assert f"(default: {action.default})" in text, (name, action.dest)


def test_top_level_help_is_plain_text_and_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and "`" not in text
    for command in ("train", "sample", "diagnose", "benchmark", "demo", "--version"):
        assert command in text, command


def test_version_is_printed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"amortized-ppl {__version__}"


def test_the_demo_keeps_its_defaults():
    args = build_parser().parse_args(["demo"])
    assert (
        args.noise,
        args.loss,
        args.steps,
        args.train_seconds,
        args.batch_size,
        args.newton_steps,
        args.num_test,
        args.num_nuts,
        args.seed,
        args.out,
        args.num_sbc,
        args.num_ood,
        args.no_diagnose,
        args.quiet,
    ) == ("known", "mixed", 3000, 150.0, 64, 8, 100, 5, 0, "demo_output", 1000, 20, False, False)


def test_num_obs_takes_a_number_or_a_range(capsys):
    assert parse_num_obs("7") == (7, 7) and parse_num_obs(" 5, 20") == (5, 20)
    args = build_parser().parse_args(["train", "--model", "m:f", "--design", "m:d", "--out", "o"])
    assert args.num_obs == (10, 100) and args.guide == "mvn"
    for bad in ("0", "20,5", "a,b", "1,2,3", ""):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--model", "m:f", "--design", "m:d", "--out", "o", "--num-obs", bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "argument --num-obs" in err, err


def test_a_missing_required_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "m:f"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("amortized-ppl: error: the following arguments are required: --design")
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ run folders (issue 23)
LINREG = "amortized_ppl.models.linear_regression"


def _train_run(api_run, tmp_path, settings):
    """A copy of the API run with a train.json, as `amortized-ppl train` writes it."""
    run = tmp_path / "run"
    shutil.copytree(api_run, run)
    (run / "train.json").write_text(json.dumps(settings))
    return run


TRAIN_REFUSALS = [
    (["--model", "no_such_module_xyz:model"], ("--model: no module named 'no_such_module_xyz'",)),
    (["--model", f"{LINREG}:modle"], ("--model:", "has no attribute 'modle'", "model_known_noise")),
    (["--design", "design.py:design_fn"], ("--design: no file 'design.py'",)),
    (["--design", "design_fn"], ("--design: expected module:function",)),
    (["--steps", "0"], ("--steps: expected an int >= 1, got 0",)),
    (["--learning-rate", "-1"], ("--learning-rate",)),
]


@pytest.mark.parametrize("args,needles", TRAIN_REFUSALS, ids=[a[1] for a, _ in TRAIN_REFUSALS])
def test_train_refuses_bad_arguments_before_any_work(tmp_path, capsys, args, needles):
    out = tmp_path / "out"
    base = {"--model": f"{LINREG}:model_known_noise", "--design": f"{LINREG}:design_fn"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["train", *[x for pair in base.items() for x in pair], "--out", str(out), "--quiet"]
    _refused(capsys, argv, *needles)
    assert not out.exists()


def test_sample_refuses_what_does_not_fit_before_loading(api_run, tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text("x_0,x_1,z\n1,2,3\n")
    out = str(tmp_path / "draws.npz")
    sample = ["sample", "--run", str(api_run), "--data", str(data), "--out", out]
    _refused(capsys, sample, "--model:", "has no train.json", "pass --model")
    model = ["--model", f"{LINREG}:model_known_noise"]
    _refused(capsys, [*sample, *model], "--data: column 'z' of", "its arguments: x, y")
    _refused(capsys, [*sample[:-1], str(tmp_path / "draws.csv"), *model], "--out: expected")
    _refused(
        capsys, [*sample[:4], str(tmp_path / "none.csv"), *sample[5:], *model], "--data: no file"
    )
    run = _train_run(api_run, tmp_path, {"model": f"{LINREG}:gone", "design": "x:y"})
    _refused(
        capsys,
        ["sample", "--run", str(run), "--data", str(data), "--out", out],
        f"the model '{LINREG}:gone' in {run}/train.json",
        "override it with --model",
    )
    assert not (tmp_path / "draws.npz").exists()


def test_sample_refuses_another_model_and_a_damaged_checkpoint(api_run, tmp_path, capsys):
    data = tmp_path / "flips.csv"
    data.write_text("y\n1\n0\n")
    run = _train_run(
        api_run,
        tmp_path,
        {
            "model": "amortized_ppl.models.bernoulli_rate:model",
            "design": "amortized_ppl.models.bernoulli_rate:design_fn",
        },
    )
    sample = ["sample", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "d.npz")]
    _refused(capsys, sample, "not arguments of the model", "another model")
    (run / "checkpoint" / "meta.json").write_text("{not json")
    _refused(capsys, sample, "meta.json")
    (run / "train.json").write_text("[1, 2]")
    _refused(capsys, sample, "train.json: expected a JSON object")


def test_diagnose_and_benchmark_need_a_design_function_for_an_api_checkpoint(api_run, capsys):
    model = ["--model", f"{LINREG}:model_known_noise"]
    for command in ("diagnose", "benchmark"):
        _refused(
            capsys,
            [command, "--run", str(api_run), *model, "--quiet"],
            "--design:",
            "pass --design",
        )
    _refused(
        capsys,
        ["benchmark", "--run", str(api_run), "--num-datasets", "0"],
        "--num-datasets: expected an int >= 1, got 0",
    )
