"""Peak memory of one fit on 2,000 ELPV files at 160 px: cached tensors in memory, and
spilled to memory-mapped files under a small ``activation_budget``.

``FineTunedClassifier(freeze_depth=0, head_epochs=1, max_epochs=1)`` caches the
preprocessed images once (2,000 x 3 x 160 x 160 float32: 614 MB) and derives the head
stage's pooled features from them. Each arm runs in a fresh process; a thread samples
``/proc/self/status`` every 20 ms during the fit. Reported: the cached tensors' size, and
the rise over the pre-fit level (model loaded, imports done) of the peak resident set
(VmHWM: anonymous and file-backed pages) and of the peak anonymous memory (RssAnon: what
cannot be paged back to a file).

Targets: in memory, the peak RSS rise stays within 1.2x the cached tensors plus the
training step's own working memory (measured separately, on 32 images); spilled, the
peak anonymous rise stays within the budget plus that working memory. Exit status 1 on a
miss.

    python benchmarks/fit_memory.py                   # 2,000 files at 160 px, ~8 min
    python benchmarks/fit_memory.py --n-images 200    # a quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from _elpv import elpv_index
from _report import report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from _lite0 import MODEL, PREPROCESSING, WEIGHTS  # noqa: E402

MB = 2**20


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakSampler(threading.Thread):
    """The peak RssAnon seen while running (VmHWM is the kernel's own peak RSS)."""

    def __init__(self, interval=0.02):
        super().__init__(daemon=True)
        self.interval, self.peak_anon, self.running = interval, 0, True

    def run(self):
        while self.running:
            self.peak_anon = max(self.peak_anon, status_kib("RssAnon"))
            time.sleep(self.interval)


def run_arm(args) -> dict:
    import numpy as np
    import torch

    from sktransfer import FineTunedClassifier

    torch.set_num_threads(args.threads)
    paths, probability, _ = elpv_index()
    rng = np.random.default_rng(0)
    idx = rng.choice(len(paths), size=args.n_images, replace=False)
    X, y = paths[idx], (probability[idx] >= 0.5).astype(int)
    clf = FineTunedClassifier(
        MODEL,
        weights=WEIGHTS,
        image_size=args.image_size,
        preprocessing=PREPROCESSING,
        freeze_depth=0,
        head_epochs=1,
        max_epochs=1,
        device="cpu",
        random_state=0,
        activation_budget=args.budget,
    )
    clf.fit(X[:32], y[:32])  # warm-up: model loading, allocator pools, kernels
    before_rss, before_anon = status_kib("VmRSS"), status_kib("RssAnon")
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    clf.fit(X, y)  # spilled arrays go to a temporary folder
    seconds = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    return {
        "seconds": seconds,
        "rss_rise_mb": (status_kib("VmHWM") - before_rss) / 1024,
        "anon_rise_mb": (sampler.peak_anon - before_anon) / 1024,
        "cached_mb": args.n_images * 3 * args.image_size**2 * 4 / MB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--spill-mib", type=int, default=128, help="budget when spilling")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--budget", default="4GiB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args)))
        return 0

    base = [sys.executable, __file__, "--image-size", str(args.image_size)]
    base += ["--threads", str(args.threads)]
    arms = {
        "working": ["--arm", "memory", "--n-images", "32"],
        "memory": ["--arm", "memory", "--n-images", str(args.n_images)],
        "spilled": [
            "--arm",
            "spilled",
            "--n-images",
            str(args.n_images),
            "--budget",
            f"{args.spill_mib}MiB",
        ],
    }
    results = {}
    for name, extra in arms.items():
        done = subprocess.run(base + extra, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]['seconds']:.0f}s", flush=True)

    work = results["working"]["rss_rise_mb"]
    cached = results["memory"]["cached_mb"]
    budget = args.spill_mib
    print(
        f"\n{args.n_images} files at {args.image_size} px; cached tensors {cached:.0f} MB; "
        f"working memory of a 32-image fit {work:.0f} MB\n"
    )
    print("| arm | fit s | peak RSS rise MB | peak anonymous rise MB |")
    print("|---|---|---|---|")
    for name in ("memory", "spilled"):
        r = results[name]
        label = f"{name} (budget {budget} MiB)" if name == "spilled" else name
        print(
            f"| {label} | {r['seconds']:.0f} | {r['rss_rise_mb']:.0f} | {r['anon_rise_mb']:.0f} |"
        )
    checks = [
        (
            f"in memory: peak RSS rise <= 1.2 x cached + working ({1.2 * cached + work:.0f} MB)",
            results["memory"]["rss_rise_mb"] <= 1.2 * cached + work,
        ),
        (
            f"spilled: peak anonymous rise <= budget + working ({budget + work:.0f} MB)",
            results["spilled"]["anon_rise_mb"] <= budget + work,
        ),
    ]
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())
