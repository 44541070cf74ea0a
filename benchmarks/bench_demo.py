"""The README's first table: the demo's guide in its variants, in one run, one results file.

Runs ``amortized_ppl.demo.run_demo`` (known-noise linear regression, d = 8 plus an intercept,
N from 10 to 200; 150 s training budget each) for:

- the default: the LaplaceRefined stage (8 Newton steps) with the mixed loss, and the trust suite;
- the same with forward KL alone, and with the amortized ELBO alone;
- the same stage with its network untrained (one step): the Laplace fit the network corrects;
- the network alone (no Newton steps), forward KL, up to 3,000 steps;
- unknown noise, judged against NUTS.

Writes ``benchmarks/results/demo.json``: each variant's settings and the demo's results (accuracy
against the closed form and NUTS, coverage, timings, and the trust summary for the default).

    python benchmarks/bench_demo.py [--quick] [--out benchmarks/results/demo.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax

from amortized_ppl.demo import DemoConfig, run_demo

VARIANTS = {
    "default_mixed": dict(),
    "forward_kl": dict(loss="forward_kl", diagnose=False),
    "elbo": dict(loss="elbo", diagnose=False),
    "laplace_untrained": dict(num_steps=1, diagnose=False),
    "network_only_forward_kl": dict(newton_steps=0, loss="forward_kl", diagnose=False),
    "unknown_noise": dict(noise="unknown", diagnose=False),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo.json"))
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated variants to run (default: all)")
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    quick = dict(num_steps=20, train_seconds=20.0, num_test=8, num_nuts=1, num_sbc=50,
                 num_ood=4) if args.quick else {}
    results = {
        "command": "python benchmarks/bench_demo.py" + (" --quick" if args.quick else ""),
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "variants": {},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            settings = {**VARIANTS[name], **quick}
            if name == "laplace_untrained":
                settings["num_steps"] = 1
            config = DemoConfig(**settings, out=str(Path(scratch) / name), progress=False)
            print(f"[bench_demo] {name}: {settings}", flush=True)
            results["variants"][name] = {"settings": settings, "results": run_demo(config)}
    results["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    print(f"[bench_demo] wrote {out}")
    return results


if __name__ == "__main__":
    main()
