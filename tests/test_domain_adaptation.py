"""Domain adaptation: skada's sample_domain convention, AdaBN, and skada's pipelines."""

from __future__ import annotations

import math
import pickle
import sys
import warnings

import numpy as np
import pytest
import sklearn
import torch
from _finetune_fixtures import tiny, two_domains
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback

from sktransfer import FineTunedRegressor, PretrainedFeatureExtractor
from sktransfer._backbone import eval_transform
from sktransfer._finetuning._alignment import AdversarialLoss, DomainClassifier
from sktransfer._finetuning._batchnorm import adapt_batchnorm
from sktransfer._images import as_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 24
SOURCE = np.ones(N, dtype=int)


@pytest.fixture(scope="module")
def domains():
    return two_domains(N)


def batchnorms(estimator):
    backbone = estimator.backbone_
    return [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


class TestConvention:
    def test_without_adaptation_target_rows_are_left_out(self, domains):
        X, y, sample_domain, _ = domains
        with_target = tiny().fit(X, y, sample_domain=sample_domain)
        source_only = tiny().fit(X[:N], y[:N])
        np.testing.assert_array_equal(with_target.predict_proba(X), source_only.predict_proba(X))
        assert not with_target.batchnorm_adapted_

    def test_masked_labels_mark_the_target_only_when_adapting(self, domains):
        X, y, sample_domain, _ = domains
        inferred = tiny(domain_adaptation="adabn").fit(X, y)
        explicit = tiny(domain_adaptation="adabn").fit(X, y, sample_domain=sample_domain)
        np.testing.assert_array_equal(inferred.predict_proba(X), explicit.predict_proba(X))
        plain = tiny().fit(X, y)  # no adaptation: -1 is a class like any other
        assert list(plain.classes_) == [-1, 0, 1, 2]

    def test_regressor_reads_nan_as_the_target(self, domains):
        X, _, sample_domain, y_class = domains
        y = np.r_[100.0 + y_class, np.full(N, np.nan)]
        inferred = tiny(FineTunedRegressor, domain_adaptation="adabn").fit(X, y)
        explicit = tiny(FineTunedRegressor, domain_adaptation="adabn")
        explicit.fit(X, y, sample_domain=sample_domain)
        np.testing.assert_array_equal(inferred.predict(X), explicit.predict(X))
        np.testing.assert_allclose(inferred.target_mean_, [101.0])  # source rows only


class TestAdaBN:
    def test_training_is_the_source_only_fit(self, domains):
        X, y, sample_domain, _ = domains
        adapted = tiny(domain_adaptation="adabn", batchnorm="frozen")
        adapted.fit(X, y, sample_domain=sample_domain)
        source_only = tiny(batchnorm="frozen").fit(X[:N], y[:N])
        trained = dict(source_only.backbone_.named_parameters())
        for name, weight in adapted.backbone_.named_parameters():
            torch.testing.assert_close(weight, trained[name])
        moved = [
            not torch.equal(a.running_mean, s.running_mean)
            for a, s in zip(batchnorms(adapted), batchnorms(source_only), strict=True)
        ]
        assert all(moved) and adapted.batchnorm_adapted_

    def test_adapting_to_the_source_itself_changes_nothing(self, domains):
        """The model trained under frozen statistics that its new weights left behind:
        recomputing them on the source would move the source's own normalisation."""
        fitted, source, _ = trained_with_frozen_statistics(domains)
        before = [(m.running_mean.clone(), m.running_var.clone()) for m in batchnorms(fitted)]
        adapt(fitted, source, source)
        for (mean, var), m in zip(before, batchnorms(fitted), strict=True):
            torch.testing.assert_close(m.running_mean, mean, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(m.running_var, var, atol=1e-4, rtol=1e-4)

    def test_target_activations_are_normalised_as_the_source_were(self, domains):
        fitted, source, target = trained_with_frozen_statistics(domains)
        expected = normalised_moments(fitted, source)
        adapt(fitted, source, target)
        for (mean, var), (e_mean, e_var) in zip(
            normalised_moments(fitted, target), expected, strict=True
        ):
            torch.testing.assert_close(mean, e_mean, atol=1e-3, rtol=1e-3)
            torch.testing.assert_close(var, e_var, atol=1e-3, rtol=1e-3)

    def test_predictions_do_not_reuse_cached_frozen_rows(self, domains, tmp_path):
        X, y, sample_domain, _ = domains
        params = dict(domain_adaptation="adabn", freeze_depth=0.5)
        cached = tiny(memory=tmp_path, **params).fit(X, y, sample_domain=sample_domain)
        plain = tiny(**params).fit(X, y, sample_domain=sample_domain)
        assert cached.cache_identity_ == {}
        np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X), atol=1e-5)

    def test_through_grid_search_with_routing_off_and_on(self, domains):
        X, y, sample_domain, _ = domains
        search = GridSearchCV(tiny(domain_adaptation="adabn"), {"lr": [1e-3]}, cv=2)
        search.fit(X, y, sample_domain=sample_domain)
        assert search.best_estimator_.batchnorm_adapted_
        with sklearn.config_context(enable_metadata_routing=True):
            clf = tiny(domain_adaptation="adabn").set_fit_request(sample_domain=True)
            search = GridSearchCV(clf, {"lr": [1e-3]}, cv=2)
            search.fit(X, y, sample_domain=sample_domain)
        assert search.best_estimator_.batchnorm_adapted_


class GroupSizes(Callback):
    """How many parameters each optimizer group holds, at the start of each stage."""

    def __init__(self):
        self.sizes_ = []

    def on_train_begin(self, net, **kwargs):
        groups = net.optimizer_.param_groups
        self.sizes_.append([sum(p.numel() for p in g["params"]) for g in groups])


def trained_with_frozen_statistics(domains):
    """A model fine-tuned under frozen BatchNorm statistics, its source and target images."""
    X, y, _, _ = domains
    fitted = tiny(batchnorm="frozen", max_epochs=3, lr=1e-2).fit(X[:N], y[:N])
    return fitted, as_images(X[:N]), as_images(X[N:])


def adapt(fitted, source, target):
    """AdaBN in one batch, so that batch moments are the moments of all the images."""
    backbone = fitted.backbone_
    transform = eval_transform(fitted.data_config_)
    adapt_batchnorm(backbone, source, target, transform, batch_size=2 * N, device="cpu")


def normalised_moments(fitted, images):
    """Per channel, the mean and variance of each BatchNorm layer's normalised inputs
    ``(x - running_mean) / sqrt(running_var + eps)`` over ``images``."""
    seen = []

    def record(module, args):
        x = (args[0] - module.running_mean[:, None, None]) / (
            module.running_var[:, None, None] + module.eps
        ).sqrt()
        seen.append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)))

    backbone = fitted.backbone_.eval()
    handles = [m.register_forward_pre_hook(record) for m in batchnorms(fitted)]
    x = torch.stack([eval_transform(fitted.data_config_)(images.load(i)) for i in range(N)])
    with torch.no_grad():
        backbone(x)
    for handle in handles:
        handle.remove()
    return seen


class TestBadInput:
    @pytest.mark.parametrize(
        "sample_domain, match",
        [
            (np.ones(N), r"domain_adaptation='adabn' needs unlabelled target images"),
            (np.ones(N + 1), r"sample_domain must hold one domain number per image \(48\)"),
            (np.r_[SOURCE, np.zeros(N)], r"sample_domain is 0.0? for the image at index 24"),
            (np.array(["s", "t"] * N), r"sample_domain must hold one domain number"),
            (-np.ones(2 * N), r"Every image is a target image"),
        ],
    )
    def test_bad_domains(self, domains, sample_domain, match):
        X, y, _, _ = domains
        if len(sample_domain) == N:
            X, y = X[:N], y[:N]
        with pytest.raises(ValueError, match=match):
            tiny(domain_adaptation="adabn").fit(X, y, sample_domain=sample_domain)

    def test_no_target_labels_at_all(self, domains):
        X, y, _, _ = domains
        with pytest.raises(ValueError, match=r"needs unlabelled target images.*-1, NaN"):
            tiny(domain_adaptation="adabn").fit(X[:N], y[:N])

    def test_a_model_without_batchnorm(self, domains):
        X, y, sample_domain, _ = domains
        vit = tiny(model="test_vit", domain_adaptation="adabn")
        with pytest.raises(ValueError, match=r"no BatchNorm layer"):
            vit.fit(X, y, sample_domain=sample_domain)

    def test_unknown_method(self, domains):
        X, y, sample_domain, _ = domains
        with pytest.raises(
            ValueError,
            match=r"'domain_adaptation' parameter .* \{'adabn', 'coral', 'dann', 'mmd', 'tent'\}",
        ):
            tiny(domain_adaptation="dann-ish").fit(X, y, sample_domain=sample_domain)


@pytest.fixture
def skada():
    """skada, with scikit-learn's metadata routing on as skada wants it (conftest turns
    it off after every test: importing skada turns it on globally)."""
    skada = pytest.importorskip("skada")
    with sklearn.config_context(enable_metadata_routing=True):
        yield skada


class TestShallowWithSkada:
    @pytest.mark.parametrize("adapter", ["coral", "subspace alignment", "density reweighting"])
    def test_extractor_in_a_da_pipeline(self, skada, domains, adapter, tmp_path):
        X, y, sample_domain, _ = domains
        extractor = PretrainedFeatureExtractor(
            "test_efficientnet", weights=None, image_size=32, device="cpu", memory=tmp_path
        )
        classifier = LogisticRegression().set_fit_request(sample_weight=True)
        adapters = {
            "coral": skada.CORALAdapter,
            "subspace alignment": lambda: skada.SubspaceAlignmentAdapter(n_components=4),
            "density reweighting": skada.DensityReweightAdapter,  # weights the classifier
        }
        pipe = skada.make_da_pipeline(extractor, adapters[adapter](), classifier)
        pipe.fit(X, y, sample_domain=sample_domain)
        predicted = pipe.predict(X[N:], sample_domain=sample_domain[N:])
        assert predicted.shape == (N,) and set(predicted) <= {0, 1, 2}
        assert any(tmp_path.rglob("*")), "the extractor's cache was used"


class TestSelectionWithoutTargetLabels:
    def test_a_skada_scorer_in_a_grid_search(self, skada, domains):
        """skada's DA scorers pass sample_domain to predict_proba: accepted (ignored)."""
        from skada.metrics import PredictionEntropyScorer
        from sklearn.model_selection import ShuffleSplit

        X, y, sample_domain, _ = domains
        clf = tiny(domain_adaptation="coral").set_fit_request(sample_domain=True)
        search = GridSearchCV(
            clf,
            {"adaptation_weight": [0.1, 1.0]},
            cv=ShuffleSplit(2, test_size=0.3, random_state=0),
            scoring=PredictionEntropyScorer(),
        ).fit(X, y, sample_domain=sample_domain)
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
        fitted = search.best_estimator_
        np.testing.assert_array_equal(
            fitted.predict_proba(X, sample_domain=sample_domain), fitted.predict_proba(X)
        )

    def test_the_regressor_takes_sample_domain_in_predict(self, domains):
        X, _, sample_domain, y_class = domains
        reg = tiny(FineTunedRegressor).fit(X[:N], y_class.astype(float))
        np.testing.assert_array_equal(reg.predict(X, sample_domain=sample_domain), reg.predict(X))


class TestAlignmentLosses:
    @pytest.mark.parametrize("method", ["coral", "mmd", "dann"])
    @pytest.mark.parametrize("augment", [None, "light"])  # cached bottom rows, or images
    def test_the_unfrozen_stage_records_its_domain_loss(self, domains, method, augment):
        X, y, sample_domain, _ = domains
        clf = tiny(domain_adaptation=method, freeze_depth=0.5, augment=augment, max_epochs=2)
        clf.fit(X, y, sample_domain=sample_domain)
        assert clf.cached_activations_ == (augment is None)
        stages = [(r["stage"], r.get("domain_loss")) for r in clf.history_]
        assert [s for s, _ in stages] == ["head", "finetune", "finetune"]
        assert stages[0][1] is None
        assert all(np.isfinite(d) and d > 0 for _, d in stages[1:])

    @pytest.mark.parametrize("method", ["coral", "dann"])
    def test_pickles_keep_no_training_parts(self, domains, method):
        X, y, sample_domain, _ = domains
        clf = tiny(domain_adaptation=method).fit(X, y, sample_domain=sample_domain)
        modules = [k for k, v in vars(clf).items() if isinstance(v, torch.nn.Module)]
        assert modules == ["backbone_"]  # no domain classifier, no target batches
        loaded = pickle.loads(pickle.dumps(clf))
        np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))

    def test_the_domain_classifier_trains_in_its_own_group(self, domains):
        X, y, sample_domain, _ = domains
        groups = GroupSizes()
        tiny(domain_adaptation="dann", callbacks=[groups]).fit(X, y, sample_domain=sample_domain)
        head_stage, finetune_stage = groups.sizes_  # test_efficientnet: 256 features
        n_domain_head = sum(p.numel() for p in DomainClassifier(256).parameters())
        assert finetune_stage[-1] == n_domain_head  # the last group: the domain classifier

    @pytest.mark.parametrize("progress, reversal", [(0.0, 0.0), (0.5, 0.9866), (1.0, 0.9999)])
    def test_dann_reverses_the_domain_gradient_with_the_ramp(self, progress, reversal):
        pytest.importorskip("skada")
        torch.manual_seed(0)
        head = DomainClassifier(8)
        source, target = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
        AdversarialLoss(head)(source, target, progress).backward()
        reversed_grad = source.grad.clone()
        source.grad = None
        criterion = torch.nn.BCEWithLogitsLoss()
        logits = head.layers(torch.cat([source, target]))[:, 0]
        plain = criterion(logits[:6], torch.zeros(6)) + criterion(logits[6:], torch.ones(6))
        plain.backward()  # the same loss, without the reversal layer
        torch.testing.assert_close(reversed_grad, -reversal * source.grad, atol=1e-4, rtol=1e-3)

    def test_the_domain_classifier_sees_both_domains_in_one_batch(self):
        # Domains that differ only by a shift of the mean: a BatchNorm that normalised
        # each domain's batch alone would erase the shift and leave the loss at 2 log 2.
        pytest.importorskip("skada")
        torch.manual_seed(0)
        head = DomainClassifier(8)
        loss = AdversarialLoss(head)
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
        for _ in range(100):
            source, target = torch.randn(32, 8), torch.randn(32, 8) + 2.0
            optimizer.zero_grad()
            value = loss(source, target, progress=1.0)
            value.backward()
            optimizer.step()
        assert value.item() < 0.2 * 2 * math.log(2)

    def test_a_diverged_adversary_warns(self, domains):
        X, y, sample_domain, _ = domains
        diverging = tiny(domain_adaptation="dann", lr=0.1, adaptation_weight=10.0)
        with pytest.warns(
            ConvergenceWarning, match=r"'dann' diverged: .* loss was 3\.\d\d"
        ) as seen:
            diverging.fit(X, y, sample_domain=sample_domain)
        assert seen[0].filename == __file__  # points at the caller of fit
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            tiny(domain_adaptation="dann").fit(X, y, sample_domain=sample_domain)

    def test_the_weight_matters(self, domains):
        X, y, sample_domain, _ = domains
        probas = [
            tiny(domain_adaptation="coral", adaptation_weight=w, lr=1e-2)
            .fit(X, y, sample_domain=sample_domain)
            .predict_proba(X)
            for w in (0.0, 100.0)
        ]
        assert not np.allclose(*probas, atol=1e-4)

    def test_skadas_losses(self):
        from sktransfer._finetuning._alignment import skada_distance

        skada_losses = pytest.importorskip("skada.deep.losses")
        assert skada_distance("coral") is skada_losses.deepcoral_loss
        assert skada_distance("mmd") is skada_losses.dan_loss

    def test_search_over_the_method(self, domains):
        X, y, sample_domain, _ = domains
        grid = {"domain_adaptation": [None, "adabn", "coral"]}
        search = GridSearchCV(tiny(), grid, cv=2).fit(X, y, sample_domain=sample_domain)
        assert len(search.cv_results_["params"]) == 3

    @pytest.mark.parametrize(
        "params, match",
        [
            ({"freeze_depth": "all"}, r"aligns the features of trainable backbone layers"),
            ({"mixup": 0.2}, r"cannot be combined with mixup"),
        ],
    )
    def test_bad_combinations(self, domains, params, match):
        X, y, sample_domain, _ = domains
        with pytest.raises(ValueError, match=match):
            tiny(domain_adaptation="coral", **params).fit(X, y, sample_domain=sample_domain)

    def test_one_target_image_is_not_enough(self, domains):
        X, y, sample_domain, _ = domains
        with pytest.raises(ValueError, match=r"needs at least 2 target images; got 1"):
            tiny(domain_adaptation="mmd").fit(
                X[: N + 1], y[: N + 1], sample_domain=sample_domain[: N + 1]
            )

    def test_without_skada(self, domains, monkeypatch):
        X, y, sample_domain, _ = domains
        monkeypatch.setitem(sys.modules, "skada.deep.losses", None)
        with pytest.raises(ImportError, match=r"pip install 'sktransfer\[da\]'"):
            tiny(domain_adaptation="coral").fit(X, y, sample_domain=sample_domain)
