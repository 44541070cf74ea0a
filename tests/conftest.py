"""Test configuration: CPU by default, fast-compile XLA flags, a fixed key, opt-in slow tests.

The tests are small: nearly all of their time is XLA compiling, not running, the programs. So
XLA's optimization of the generated code is turned down (``FAST_COMPILE_XLA_FLAGS``): LLVM at
-O0 and XLA:CPU's loop emitters instead of its MLIR fusion emitters. That changes how fast the
code runs, not what it computes (at most the last bits, which chaotic computations such as NUTS
chains may amplify), and it halves the suite's time on two cores (measured on test_rtb.py and
test_guides.py: 180 s -> 79 s). ``AMORTIZED_PPL_TEST_OPTIMIZED_XLA=1`` keeps XLA's defaults.
"""

import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from amortized_ppl.xla_flags import FAST_COMPILE_XLA_FLAGS as _FAST  # noqa: E402  (no JAX)

# One XLA:CPU thread per process: the suite runs as many workers as cores, and each worker's
# Eigen thread pool fought the other's (the default tier ran faster without them). Only "--"
# flags: XLA stops reading XLA_FLAGS at the first token that is not one (a bare
# "intra_op_parallelism_threads=1" here once hid every flag after it, a user's included).
FAST_COMPILE_XLA_FLAGS = (*_FAST, "--xla_cpu_multi_thread_eigen=false")


def _accepted(flags) -> bool:
    """Whether this jaxlib starts with ``flags`` (an unknown flag aborts the process)."""
    env = dict(os.environ, XLA_FLAGS=" ".join([*flags, os.environ.get("XLA_FLAGS", "")]))
    probe = "import jax; jax.jit(lambda x: x + 1)(1.0).block_until_ready()"
    try:
        run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return run.returncode == 0


def _add_fast_compile_flags() -> None:
    """Prepend the accepted fast-compile flags to ``XLA_FLAGS``, once: xdist workers and notebook
    kernels inherit the environment, so they find the flags there and skip the probe."""
    existing = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("AMORTIZED_PPL_TEST_OPTIMIZED_XLA") == "1" or any(
            flag.split("=")[0] in existing for flag in FAST_COMPILE_XLA_FLAGS):
        return
    flags = list(FAST_COMPILE_XLA_FLAGS)
    if not _accepted(flags):
        flags = [flag for flag in flags if _accepted([flag])]
    os.environ["XLA_FLAGS"] = " ".join(flags + ([existing] if existing else []))


_add_fast_compile_flags()


import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


# The longest items go first (the HMM accuracy run, 4-6 minutes; the benchmark smoke tests, the
# notebooks and the demo's end-to-end runs, 1-3 minutes each), dealt in turn to the workers:
# xdist's worksteal hands each worker a contiguous share of the collection at the start and
# steals only from the ends of those shares, so each share begins with its own long items and
# no worker ends the run alone on one of them.
_LONG_FIRST = ("test_gaussian_hmm.py", "test_benchmarks.py", "test_notebooks.py", "test_demo.py",
               "test_gaussian_factors.py")


def _file(item) -> str:
    return item.nodeid.split("::")[0].rsplit("/", 1)[-1]


def _deal_long_items(items, num_workers: int) -> list:
    """Reorder so that each worker's initial share starts with its turn of the long items."""
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    long = sorted((it for it in items if _file(it) in rank), key=lambda it: rank[_file(it)])
    short = [it for it in items if _file(it) not in rank]
    shares, remaining, order = [], len(items), []
    for worker in range(num_workers):  # the sizes worksteal's first distribution gives
        shares.append(remaining // (num_workers - worker))
        remaining -= shares[-1]
    dealt = [long[w::num_workers] for w in range(num_workers)]
    for share, mine in zip(shares, dealt):
        take = max(0, share - len(mine))
        order += mine + short[:take]
        short = short[take:]
    return order + short


def pytest_collection_modifyitems(config, items):
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    items[:] = _deal_long_items(items, max(1, int(workers)))
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def key():
    return jax.random.key(0)


# A worker's compiled programs accumulate over the run (in a full run, workers grew to several
# GB and, beside the notebooks' kernels, ran a 24 GB machine out of memory: the "node down"
# crashes). After each test module, a worker above this resident size drops
# JAX's compiled programs; modules that share a cached guide then compile again, which costs far
# less than a crashed worker (a much lower bound made the default tier clear and compile
# again in most modules).
MAX_WORKER_RSS_BYTES = 6 * 2**30


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: no check
        return 0


@pytest.fixture(scope="module", autouse=True)
def _bounded_compilation_cache():
    yield
    if _resident_bytes() > MAX_WORKER_RSS_BYTES:
        import gc

        jax.clear_caches()
        gc.collect()
