"""Data parallelism (amortized_ppl/sharding.py): argument checks here; the sharded programs on
four forced host devices against one device in a subprocess (slow tier)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amortized_ppl.sharding import (
    DATA_AXIS,
    check_divides,
    constrain_batch,
    data_mesh,
    replicate,
    resolve_mesh,
    shard_batch,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_a_mesh_from_a_count_or_devices_and_clear_refusals():
    mesh = data_mesh(1)
    assert mesh.axis_names == (DATA_AXIS,) and mesh.devices.size == 1
    assert data_mesh().devices.size == len(jax.devices())
    assert data_mesh(jax.devices()[:1]).devices.size == 1
    assert resolve_mesh(None) is None and resolve_mesh(mesh) is mesh
    assert resolve_mesh(1).devices.size == 1
    with pytest.raises(ValueError, match="force_host_platform_device_count"):
        data_mesh(len(jax.devices()) + 1)
    with pytest.raises(TypeError, match="devices"):
        data_mesh(["cpu"])
    with pytest.raises(TypeError, match="mesh"):
        resolve_mesh("4")
    with pytest.raises(ValueError, match="axis named 'data'"):
        resolve_mesh(jax.sharding.Mesh(jax.devices()[:1], ("batch",)))
    check_divides(7, None, "batch_size")  # no mesh: anything goes
    check_divides(7, mesh, "batch_size")


def test_one_device_placement_keeps_values_and_refuses_mixed_batches():
    mesh = data_mesh(1)
    tree = {"y": jnp.arange(6.0).reshape(3, 2), "x": jnp.ones(5), "n": 4}
    with pytest.raises(ValueError, match="leading"):
        shard_batch(tree, mesh)
    placed = shard_batch({"y": tree["y"], "n": 4}, mesh)
    assert placed["n"] == 4 and bool(jnp.all(placed["y"] == tree["y"]))
    assert shard_batch(tree, None) is tree and replicate(tree, None) is tree
    assert bool(jnp.all(replicate(tree, mesh)["x"] == 1))
    out = jax.jit(lambda t: constrain_batch(t, mesh, 3))({"y": tree["y"], "x": tree["x"]})
    assert bool(jnp.all(out["y"] == tree["y"]))


@pytest.mark.slow  # a subprocess compiling training, SBC and NUTS twice (one and four devices)
def test_four_devices_match_one_device():
    # The suite's fast-compile flags are kept; the device count goes first (XLA stops reading
    # XLA_FLAGS at a token it does not parse).
    env = dict(os.environ, XLA_FLAGS=" ".join(
        ["--xla_force_host_platform_device_count=4", os.environ.get("XLA_FLAGS", "")]).strip(),
        PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", "tests.sharding.on_devices"], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["devices"] == 4
    train = out["train"]
    # Float32 sums in another order (the all-reduce), through 20 Adam steps.
    assert train["loss_gap"] < 1e-4 and train["param_gap"] < 1e-3 * train["param_scale"]
    assert train["params_replicated"] and train["params_devices"] == 4
    iterative = out["train_iterative"]  # fit_iterative, 6 steps of 8 data sets
    assert iterative["params_devices"] == 4
    assert iterative["loss_gap"] < 1e-4 * iterative["loss_scale"]
    assert iterative["param_gap"] < 1e-3 * iterative["param_scale"]
    posterior = out["posterior"]
    assert posterior["input_devices"] == 4 and posterior["gap"] < 1e-5 * posterior["scale"]
    assert out["sbc"]["ranks"] == 64 and out["sbc"]["rank_mismatches"] == 0
    assert out["nuts"]["gap"] < 1e-4 * out["nuts"]["scale"]
    datasets = out["nuts_datasets"]  # NUTS over 4 data sets, split over the 4 devices
    assert datasets["count"] == 4 and datasets["gap"] < 1e-4 * datasets["scale"]
    for name, rtb in out["rtb"].items():  # RTB and KL-RL, 10 steps on 4 devices against 1
        assert rtb["params_devices"] == 4, name
        assert rtb["loss_gap"] < 1e-4 * rtb["loss_scale"], name
        assert rtb["param_gap"] < 1e-3 * rtb["param_scale"], name
    assert len(out["errors"]) == 3 and all("split evenly" in e for e in out["errors"])
    assert "config.batch_size" in out["errors"][2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _checksums(num_processes: int, cpu_devices: int) -> list[float]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("XLA_FLAGS", None)  # the example sets its own device count
    command = [sys.executable, str(REPO_ROOT / "examples" / "multi_host.py"), "--coordinator",
               f"localhost:{_free_port()}", "--num-processes", str(num_processes),
               "--cpu-devices", str(cpu_devices), "--steps", "5"]
    runs = [subprocess.Popen([*command, "--process-id", str(i)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(num_processes)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
    lines = [re.search(r"process (\d) of (\d): (\d) devices.*checksum (\S+)", out)
             for out, _ in outputs]
    assert all(lines), outputs
    assert {int(m.group(3)) for m in lines} == {num_processes * cpu_devices}
    return [float(m.group(4)) for m in lines]


@pytest.mark.slow  # three processes, each compiling a training step
def test_the_multi_host_example_trains_one_model_across_processes():
    two_hosts = _checksums(2, 2)  # two processes of two CPU devices each
    one_host = _checksums(1, 1)
    assert two_hosts[0] == two_hosts[1]  # every process holds the same replicated parameters
    np.testing.assert_allclose(two_hosts[0], one_host[0], rtol=1e-4)
