"""Scale-out on Dask: embedding and grid searches on a LocalCluster, and memory at scale.

Three measurements, each side by side in one run (one torch thread per process):

1. **Embedding** ``--n-images`` ELPV files (default 2,000) at ``--image-size`` (128 px)
   with the EfficientNet-Lite0 ImageNet weights: the plain ``transform`` in this process
   against ``dask_transform(...).compute()`` on a LocalCluster of 1 worker and one of 2
   workers (one thread each), in interleaved rounds after a warm-up, best times kept. Targets: the
   1-worker cluster within 1.15x of the plain ``transform`` (the cost of Dask), and 2
   workers at least 1.6x faster than 1.
2. **Grid search** of the probe pipeline (the extractor with a warm cache, then
   ``LogisticRegression``), 3 folds x 4 values of C, under
   ``joblib.parallel_config(backend="dask")``, on each cluster. Target: 2 workers at
   least 1.5x faster than 1.
3. **Memory**: ``python -m sktransfer embed`` of ``--n-small`` small files (default
   20,000 64x64 crops of ELPV cells, written to a temporary folder) on a fresh 2-worker
   cluster, to ``.npy``: the peak RSS of each worker and of the command's process after
   embedding the first tenth of the files, and after all of them. Target: no peak grows
   by more than 25 MiB (the 20,000 embeddings, 1,280 floats each, weigh 98 MiB: piled up
   on two workers they would add about 50 MiB to each; they stream into the output).

The clusters run as the scale-out guide recommends for CPU workers: without the
``MALLOC_TRIM_THRESHOLD_`` that Dask sets in the worker processes it starts by default,
which makes torch's CPU inference about 30 % slower (glibc then serves every large
allocation with a fresh ``mmap``); ``--dask-default-env`` keeps it, to measure that.

Exit status 1 when a target is missed.

    python benchmarks/scale.py                     # about 9 minutes on 2 cores
    python benchmarks/scale.py --n-images 400 --n-small 2000 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import dask
import numpy as np
import torch
from _elpv import DEFECT_THRESHOLD, elpv_index
from _report import report
from _timing import seconds
from distributed import Client, LocalCluster
from joblib import parallel_config
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from sktransfer import dask_transform

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from _lite0 import MODEL, WEIGHTS, feature_extractor  # noqa: E402

MAX_OVERHEAD = 1.15
MIN_EMBED_SPEEDUP = 1.6
MIN_SEARCH_SPEEDUP = 1.5
MAX_RSS_GROWTH_MIB = 25  # embeddings piling up would add ~50 MiB per worker at 20,000
C_VALUES = [0.01, 0.1, 1.0, 10.0]


def cluster(n_workers: int) -> tuple[LocalCluster, Client]:
    local = LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    return local, Client(local, set_as_default=False)


def on(client: Client, call):
    """``call()`` with ``client`` as the current client (for ``dask_transform``)."""
    with client.as_current():
        return call()


def table(title: str, header: tuple, rows: list[tuple]) -> None:
    lines = [header, *rows]
    widths = [max(len(str(line[j])) for line in lines) for j in range(len(header))]
    print(f"\n{title}")
    for k, line in enumerate(lines):
        print("  ".join(str(cell).rjust(w) for cell, w in zip(line, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


# ---------------------------------------------------------------------- 1. embedding


def embedding(paths, image_size: int, repeats: int, clusters: dict) -> dict[str, float]:
    model = feature_extractor(image_size).fit()

    def on_cluster(client, some_paths):
        return on(client, lambda: dask_transform(model, some_paths).compute())

    runs = {
        "plain transform (this process)": lambda: model.transform(paths),
        **{
            f"dask_transform, {n} worker{'s' * (n > 1)}": lambda c=client: on_cluster(c, paths)
            for n, client in clusters.items()
        },
    }
    model.transform(paths)  # warm-up: every file in the page cache
    for client in clusters.values():  # and imports and a model on every worker
        on_cluster(client, paths[:64])
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(seconds(run))
    return {name: min(t) for name, t in times.items()}


# ---------------------------------------------------------------------- 2. grid search


def grid_search(paths, y, image_size: int, repeats: int, clusters: dict, cache: str):
    feature_extractor(image_size, memory=cache).fit().transform(paths)  # the warm cache
    # unfitted, as searches take it (scikit-learn's default scorer holds the estimator it
    # is given, so a fitted one would travel with every task)
    probe = make_pipeline(
        feature_extractor(image_size, memory=cache), LogisticRegression(max_iter=500)
    )

    def search(client):
        grid = GridSearchCV(probe, {"logisticregression__C": C_VALUES}, cv=3, n_jobs=-1)
        with client.as_current(), parallel_config(backend="dask", scatter=[paths, y]):
            return grid.fit(paths, y)

    times = {n: [] for n in clusters}
    for client in clusters.values():
        search(client)  # warm-up
    for _ in range(repeats):
        for n, client in clusters.items():
            times[n].append(seconds(lambda c=client: search(c)))
    return {n: min(t) for n, t in times.items()}


# ---------------------------------------------------------------------- 3. memory


def write_small_files(folder: Path, n: int, cells) -> None:
    """``n`` 64x64 crops of ELPV cells (a different crop for each repeat of a cell)."""
    for i in range(n):
        with Image.open(cells[i % len(cells)]) as cell:
            shift = (i // len(cells)) * 7 % 236
            crop = cell.crop((shift, shift, shift + 64, shift + 64))
            crop.save(folder / f"{i:05d}.png")


def peak_rss(client: Client) -> dict[str, float]:
    """Each worker's peak resident memory so far, in MiB (Linux reports KiB)."""
    peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return {worker: kib / 1024 for worker, kib in sorted(peaks.items())}


def embed_with_the_cli(root: Path, out: Path, address: str) -> float:
    command = [sys.executable, "-m", "sktransfer", "embed", str(root), "--model", MODEL,
               "--weights", str(WEIGHTS), "--preprocessing", "inception",
               "--image-size", "64", "--out", str(out),
               "--dask-scheduler", address, "--no-progress"]  # fmt: skip
    return seconds(lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL))


def memory(n_small: int, cells, folder: Path):
    first, every = folder / "first", folder / "every"
    every.mkdir()
    write_small_files(every, n_small, cells)
    first.mkdir()
    for path in sorted(every.iterdir())[: n_small // 10]:
        os.link(path, first / path.name)
    local, client = cluster(2)
    with local, client:
        rows = []
        for root in (first, every):
            took = embed_with_the_cli(root, folder / f"{root.name}.npy", local.scheduler_address)
            n = len(np.load(folder / f"{root.name}.npy", mmap_mode="r"))
            cli = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MiB
            rows.append((root.name, n, took, {**peak_rss(client), "command": cli}))
    return rows


# ---------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--n-small", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dask-default-env", action="store_true")
    args = parser.parse_args()
    if not args.dask_default_env:
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    torch.set_num_threads(1)
    threadpool_limits(1)  # BLAS in this process on one thread, as on the workers

    paths, probability, _ = elpv_index()
    pick = np.random.default_rng(0).choice(len(paths), args.n_images, replace=False)
    X, y = paths[pick], (probability[pick] >= DEFECT_THRESHOLD).astype(int)
    checks = []
    clusters = {n: cluster(n) for n in (1, 2)}
    try:
        embed = embedding(X, args.image_size, args.repeats, clusters={
            n: client for n, (_, client) in clusters.items()})  # fmt: skip
        plain, one, two = embed.values()
        table(
            f"Embedding {len(X)} ELPV files at {args.image_size} px ({MODEL}, best of "
            f"{args.repeats}, one torch thread per process)",
            ("run", "seconds", "images/s", "vs plain"),
            [(name, f"{s:.2f}", f"{len(X) / s:.1f}", f"{s / plain:.2f}x") for name, s in embed.items()],
        )  # fmt: skip
        checks.append((f"1 worker within {MAX_OVERHEAD}x of plain transform: {one / plain:.2f}x",
                       one / plain <= MAX_OVERHEAD))  # fmt: skip
        checks.append((f"2 workers >= {MIN_EMBED_SPEEDUP}x faster than 1: {one / two:.2f}x",
                       one / two >= MIN_EMBED_SPEEDUP))  # fmt: skip

        with tempfile.TemporaryDirectory() as cache:
            search = grid_search(X, y, args.image_size, args.repeats, clusters={
                n: client for n, (_, client) in clusters.items()}, cache=cache)  # fmt: skip
        table(
            f"Grid search of the probe, 3 folds x {len(C_VALUES)} C, warm cache (best of "
            f"{args.repeats})",
            ("workers", "seconds", "speed-up"),
            [(n, f"{s:.2f}", f"{search[1] / s:.2f}x") for n, s in search.items()],
        )
        speedup = search[1] / search[2]
        checks.append((f"search: 2 workers >= {MIN_SEARCH_SPEEDUP}x faster than 1: "
                       f"{speedup:.2f}x", speedup >= MIN_SEARCH_SPEEDUP))  # fmt: skip
    finally:
        for local, client in clusters.values():
            client.close()
            local.close()

    with tempfile.TemporaryDirectory() as folder:
        rows = memory(args.n_small, paths, Path(folder))
    processes = [*sorted(p for p in rows[0][3] if p != "command"), "command"]
    names = [f"worker {k}" for k in range(len(processes) - 1)] + ["command"]
    table(
        "Memory: `python -m sktransfer embed --dask-scheduler` of small files (64x64 "
        "crops, 64 px) to .npy on 2 workers; peak RSS of each process so far, MiB",
        ("files", "rows", "seconds", *names),
        [(name, n, f"{took:.1f}", *[f"{peaks[p]:.0f}" for p in processes])
         for name, n, took, peaks in rows],
    )  # fmt: skip
    growth = max(rows[1][3][p] - rows[0][3][p] for p in processes)
    checks.append((f"peak RSS after {rows[1][1]} files within {MAX_RSS_GROWTH_MIB} MiB of "
                   f"after {rows[0][1]}: +{growth:.0f} MiB", growth <= MAX_RSS_GROWTH_MIB))  # fmt: skip
    checks.append((f"every file embedded: {rows[1][1]} rows", rows[1][1] == args.n_small))
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())
