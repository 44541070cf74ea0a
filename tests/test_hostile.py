"""Bad input at every public entry point (data, sites, keys, shapes, training, checkpoints,
diagnostics, the command line) is refused with a clear error, or warned about where an answer is
still useful: the case table of ``benchmarks/bench_hostile.py`` (issue 15: of 85 bad inputs, 11
gave a silent wrong answer and 10 an obscure crash or a raw traceback).

Each case must have exactly the outcome it states; a case that regresses to a silent answer, a
crash with another exception type or a message that no longer names the problem fails here.
"""

import json
import warnings
from pathlib import Path

import pytest

from tests.helpers import load_script

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_hostile.py"


def _load_bench():
    return load_script(BENCH_PATH)


BENCH = _load_bench()

# The categories the table must cover (issue 15: "a bad-input test table covers every public
# entry point").
REQUIRED_CATEGORIES = {"data", "sites", "keys", "shapes", "train", "ckpt", "ood", "sbc", "refine",
                       "ppc", "cli"}


def test_case_table_covers_every_entry_point():
    names = [case.name for case in BENCH.CASES]
    assert len(names) == len(set(names))
    assert REQUIRED_CATEGORIES <= {case.category for case in BENCH.CASES}
    for case in BENCH.CASES:
        assert case.expect in ("clear_error", "warning"), case.name
        assert case.words and all(word.strip() for word in case.words), case.name


def _classify(case, error=None, value=None, messages=()):
    caught = [warnings.WarningMessage(m, RuntimeWarning, "f.py", 1) for m in messages]
    return BENCH.classify(case, error, value, caught, False)[0]


def test_classifier_tells_the_outcomes_apart():
    case = BENCH.Case("data/example", lambda ctx: None, "clear_error", ("y", "NaN"))
    assert _classify(case, ValueError("argument 'y' contains 1 NaN value(s).")) == "clear_error"
    assert _classify(case, KeyError("y: NaN")) == "clear_error"
    # The words must name the problem as whole words: "y" is not in "types".
    assert _classify(case, TypeError("NaN: unsupported input types")) == "obscure_crash"
    assert _classify(case, AttributeError("'y' has NaN")) == "obscure_crash"
    assert _classify(case, value=1.0) == "silent_wrong"
    assert _classify(case, value=1.0, messages=["y holds NaN"]) == "warning"
    assert _classify(case, value=1.0, messages=["something else"]) == "silent_wrong"

    cli = BENCH.Case("cli/example", lambda ctx: None, "clear_error", ("num_steps",))
    one_line = BENCH.CliResult(
        2, "amortized-ppl: error: num_steps: expected an int >= 1, got 0.\n")
    assert _classify(cli, value=one_line) == "clear_error"
    traceback = BENCH.CliResult(1, "Traceback (most recent call last):\nValueError: num_steps\n")
    assert _classify(cli, value=traceback) == "obscure_crash"
    vague = BENCH.CliResult(2, "amortized-ppl: error: bad\n")  # lacks the case's words
    assert _classify(cli, value=vague) == "obscure_crash"
    assert _classify(cli, value=BENCH.CliResult(0, "")) == "silent_wrong"


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return BENCH.Context(tmp_path_factory.mktemp("hostile"))


# About 35 s for the whole table on 2 loaded cores with the suite's fast-compile XLA flags (set-up,
# a few set-ups of other models, the compilations of the cases that reach the network; the script
# with XLA's defaults takes about 2 minutes), so it is opt-in.
@pytest.mark.slow
@pytest.mark.parametrize("case", BENCH.CASES, ids=[case.name for case in BENCH.CASES])
def test_bad_input_has_the_expected_outcome(case, context):
    result = BENCH.run_case(case, context)

    assert result.outcome == case.expect, f"{case.name}: {result.outcome}: {result.detail}"


@pytest.mark.slow
def test_script_writes_counts_and_command(tmp_path):
    out = tmp_path / "hostile.json"

    BENCH.main(["--only", "keys/none", "--out", str(out)])

    report = json.loads(out.read_text())
    assert report["command"] == f"bench_hostile.py --only keys/none --out {out}"
    assert report["num_cases"] == 1
    assert report["counts"] == {**dict.fromkeys(BENCH.OUTCOMES, 0), "clear_error": 1}
    (case,) = report["cases"]
    assert case["name"] == "keys/none_key" and case["ok"]
