"""Model files saved by sktransfer at commit 3bb8eef still load and predict the same.

``tests/data/files_3bb8eef/`` holds a classifier, a multi-task classifier, a regressor and
a probe pipeline (extractor + logistic regression), each pickled and saved with skops,
and ``expected.npz``: the check images and what 3bb8eef predicted on them. The files were
made by ``tests/data/make_files_3bb8eef.py`` run against that commit; never regenerate
them with newer code (that would test nothing).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from sktransfer import FineTunedClassifier, FineTunedRegressor

skops_io = pytest.importorskip("skops.io")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FILES = Path(__file__).parent / "data" / "files_3bb8eef"
MODELS = {
    "classifier": FineTunedClassifier,
    "multitask": FineTunedClassifier,
    "regressor": FineTunedRegressor,
    "probe": Pipeline,
}


@pytest.fixture(scope="module")
def expected():
    with np.load(FILES / "expected.npz") as stored:
        return dict(stored)


def load(path: Path):
    if path.suffix == ".pkl":
        with open(path, "rb") as f:
            return pickle.load(f)
    untrusted = skops_io.get_untrusted_types(file=path)
    assert untrusted and all(t.startswith("sktransfer.") for t in untrusted), untrusted
    return skops_io.load(path, trusted=untrusted)


def assert_same_outputs(actual, desired):
    actual = np.asarray(actual)
    if desired.dtype.kind == "U":
        np.testing.assert_array_equal(actual.astype(str), desired)  # labels: exactly
    else:
        np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", [".pkl", ".skops"])
@pytest.mark.parametrize("name", list(MODELS))
def test_loads_and_predicts_as_when_saved(name, suffix, expected):
    model = load(FILES / f"{name}{suffix}")
    assert type(model) is MODELS[name]
    X = expected["X"]
    estimator = model[0] if name == "probe" else model
    # parameters added since 3bb8eef take their defaults: the behaviour it was saved with
    assert estimator.get_params()["preprocessing"] is None
    assert estimator.precision_ == "float32"

    assert_same_outputs(model.predict(X), expected[f"{name}.predict"])
    if name == "regressor":
        return
    proba = model.predict_proba(X)
    if name == "multitask":
        stored = sorted(k for k in expected if k.startswith("multitask.predict_proba."))
        assert isinstance(proba, list) and len(proba) == len(stored) == 2
        for got, key in zip(proba, stored, strict=True):
            assert_same_outputs(got, expected[key])
    else:
        assert_same_outputs(proba, expected[f"{name}.predict_proba"])
