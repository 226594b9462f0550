"""TENT (test-time entropy minimisation): after the source fit, only the BatchNorm
layers change, the target predictions grow more confident, and the model predicts
with the target images' statistics."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from _finetune_fixtures import tiny, two_domains

from sktransfer import FineTunedClassifier, FineTunedRegressor
from sktransfer._finetuning._batchnorm import BATCHNORMS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 24


@pytest.fixture(scope="module")
def domains():
    return two_domains(N)[:3]


@pytest.fixture(scope="module")
def fits(domains):
    X, y, sample_domain = domains
    source_only = tiny(random_state=0).fit(X[:N], y[:N])
    tent = tiny(domain_adaptation="tent", random_state=0).fit(X, y, sample_domain=sample_domain)
    return source_only, tent


def entropy(proba):
    return -(proba * np.log(np.clip(proba, 1e-12, None))).sum(axis=1).mean()


def is_batchnorm_entry(backbone, name) -> bool:
    module = backbone.get_submodule(name.rpartition(".")[0])
    return isinstance(module, BATCHNORMS)


def test_only_batchnorm_layers_change(fits):
    source_only, tent = fits
    before, after = source_only.backbone_.state_dict(), tent.backbone_.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "TENT changed nothing"
    assert all(is_batchnorm_entry(tent.backbone_, k) for k in changed), sorted(changed)
    affine = {k for k in changed if k.endswith((".weight", ".bias"))}
    statistics = {k for k in changed if k.endswith(("running_mean", "running_var"))}
    assert affine and statistics


def test_target_predictions_grow_more_confident(fits, domains):
    source_only, tent = fits
    X = domains[0][N:]
    assert entropy(tent.predict_proba(X)) < entropy(source_only.predict_proba(X))


def test_history_records_the_target_entropy_per_pass(fits):
    source_only, tent = fits
    n = len(source_only.history_)
    assert tent.history_[:n] == [
        {**record, "dur": tent.history_[i]["dur"]} for i, record in enumerate(source_only.history_)
    ]
    passes = tent.history_[n:]
    assert [r["epoch"] for r in passes] == [n + 1]
    assert all(r["stage"] == "tent" and r["target_entropy"] > 0 for r in passes)
    assert tent.batchnorm_adapted_


def test_prediction_does_not_depend_on_the_batch(fits, domains):
    """BatchNorm layers are back in eval mode, with the target statistics stored."""
    _, tent = fits
    X = domains[0][N:]
    together = tent.predict_proba(X)
    one_by_one = np.concatenate([tent.predict_proba(X[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(one_by_one, together[:4], rtol=1e-5, atol=1e-6)


def test_pickle_keeps_the_adapted_model(fits, domains):
    _, tent = fits
    X = domains[0][N:]
    loaded = pickle.loads(pickle.dumps(tent))
    np.testing.assert_array_equal(loaded.predict_proba(X), tent.predict_proba(X))


def test_memory_shares_no_rows(domains, tmp_path):
    X, y, sample_domain = domains
    clf = tiny(domain_adaptation="tent", memory=tmp_path).fit(X, y, sample_domain=sample_domain)
    assert clf.cache_identity_ == {}


def test_multitask_labels_adapt_too(domains):
    X, y, sample_domain = domains
    labels = np.column_stack([y, np.where(y >= 0, y % 2, -1)])
    clf = tiny(domain_adaptation="tent").fit(X, labels, sample_domain=sample_domain)
    assert clf.history_[-1]["stage"] == "tent"


def test_real_targets_have_no_entropy(domains):
    X, _, sample_domain = domains
    with pytest.raises(ValueError, match=r"'tent' minimises the entropy .* real-valued"):
        tiny(FineTunedRegressor, domain_adaptation="tent").fit(
            X, np.linspace(0, 1, 2 * N), sample_domain=sample_domain
        )


def test_a_model_without_batchnorm(domains):
    X, y, sample_domain = domains
    with pytest.raises(ValueError, match=r"'tent' adapts BatchNorm layers .* no BatchNorm"):
        tiny(model="test_vit", domain_adaptation="tent").fit(X, y, sample_domain=sample_domain)


def test_defaults_are_documented():
    assert '"tent"' in FineTunedClassifier.__doc__ and "lr 1e-3, one pass" in (
        FineTunedClassifier.__doc__.replace("\n        ", " ")
    )
