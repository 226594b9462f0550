"""FineTunedClassifier's training knobs: batchnorm, augmentation presets, mixup and
cutmix, the weight average (ema), test-time augmentation, sample_weight, and the last
training batch of one image."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
import torch
from _finetune_fixtures import (
    BackboneSnapshots,
    BatchNormModes,
    batchnorm_modules,
    colour_images,
    tiny,
)
from PIL import Image
from sklearn.exceptions import UnsetMetadataPassedError
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback

from sktransfer import FineTunedClassifier
from sktransfer._backbone import (
    AUGMENT_POLICIES,
    batch_mixer,
    data_config,
    eval_transform,
    train_transform,
)
from sktransfer._finetuning._net import TransferModule, TransferNet, _mix

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def colours():
    """24 images, 8 per class, whose colour gives their class index."""
    y = np.repeat([0, 1, 2], 8)
    return colour_images(y), y


def changed_keys(before, after):
    return {k for k in after if not torch.equal(after[k], before[k])}


class BatchSizes(Callback):
    """Sizes of the training batches, per stage."""

    def __init__(self):
        self.stages_ = []

    def on_train_begin(self, net, **kwargs):
        self.stages_.append([])

    def on_batch_end(self, net, batch, training=False, **kwargs):
        if training:
            self.stages_[-1].append(len(batch[1]))


class Mixers(Callback):
    """The (mixup, cutmix) alphas of each stage's mixer, or None."""

    def __init__(self):
        self.stages_ = []

    def on_train_begin(self, net, **kwargs):
        mixer = net.mixer
        self.stages_.append(None if mixer is None else (mixer.mixup_alpha, mixer.cutmix_alpha))


# ------------------------------------------------------------------------- batchnorm


class TestBatchNorm:
    @pytest.mark.parametrize("augment", [None, "light"], ids=["cached", "streamed"])
    def test_frozen_keeps_running_statistics_bit_identical(self, colours, augment):
        X, y = colours
        snapshots, modes = BackboneSnapshots(), BatchNormModes()
        clf = tiny(
            freeze_depth=0,
            batchnorm="frozen",
            lr=0.02,
            augment=augment,
            callbacks=[snapshots, modes],
        ).fit(X, y)
        before = snapshots.at_train_begin_[0]
        after = clf.backbone_.state_dict()
        stats = {k for k in after if k.rsplit(".", 1)[1] in ("running_mean", "running_var")}
        assert stats
        changed = changed_keys(before, after)
        assert not changed & stats
        # the affine weights of the same layers still train
        bn_weights = {f"{name}.weight" for name in batchnorm_modules(clf.backbone_)}
        assert bn_weights <= changed
        assert all(not training for stage in modes.stages_ for training in stage)

    def test_train_updates_running_statistics(self, colours):
        X, y = colours
        snapshots, modes = BackboneSnapshots(), BatchNormModes()
        clf = tiny(freeze_depth=0, batchnorm="train", callbacks=[snapshots, modes]).fit(X, y)
        after = clf.backbone_.state_dict()
        changed = changed_keys(snapshots.at_train_begin_[0], after)
        assert {k for k in changed if k.endswith("running_mean")}
        bns = set(batchnorm_modules(clf.backbone_))
        assert all(training == bns for training in modes.stages_[1])

    @pytest.mark.parametrize("weights, frozen", [(None, False), ("checkpoint", True)])
    def test_auto_freezes_with_pretrained_weights_only(
        self, colours, tiny_checkpoint, weights, frozen
    ):
        X, y = colours
        modes = BatchNormModes()
        weights = tiny_checkpoint if weights == "checkpoint" else None
        tiny(weights=weights, freeze_depth=0, callbacks=[modes]).fit(X, y)
        any_training = any(training for training in modes.stages_[1])
        assert any_training is not frozen


# ----------------------------------------------------------------------- augmentation


class TestAugmentPresets:
    @pytest.mark.parametrize(
        "preset, n_ops, prob, uniform",
        [("randaugment", 2, 0.5, False), ("trivialaugment", 1, 1.0, True)],
    )
    def test_presets_are_timm_randaugment(self, preset, n_ops, prob, uniform):
        model = tiny().fit(*_two_classes()).backbone_
        tf = train_transform(data_config(model, 32), preset)
        rand = [t for t in tf.transforms if type(t).__name__ == "RandAugment"]
        assert len(rand) == 1
        assert rand[0].num_layers == n_ops
        assert rand[0].choice_weights is None
        assert all(op.prob == prob for op in rand[0].ops)
        assert (rand[0].ops[0].magnitude_std == float("inf")) is uniform

    @pytest.mark.parametrize("preset", ["randaugment", "trivialaugment"])
    @pytest.mark.parametrize("magnitude", [0.0, 100.0], ids=["weakest", "strongest"])
    def test_every_operation_runs_at_both_ends_of_its_range(self, preset, magnitude):
        model = tiny().fit(*_two_classes()).backbone_
        tf = train_transform(data_config(model, 32), preset)
        (rand,) = [t for t in tf.transforms if type(t).__name__ == "RandAugment"]
        image = Image.fromarray(colour_images(np.array([1]))[0])
        for op in rand.ops:
            op.prob, op.magnitude_std, op.magnitude = 1.0, 0.0, magnitude
            assert op(image).size == image.size, op.name

    def test_light_has_no_policy(self):
        assert AUGMENT_POLICIES["light"] is None

    @pytest.mark.parametrize("preset", ["randaugment", "trivialaugment"])
    def test_presets_train_on_streamed_images(self, colours, preset):
        X, y = colours
        clf = tiny(freeze_depth=3, augment=preset).fit(X, y)
        assert clf.cached_activations_ is False
        assert clf.predict(X).shape == (len(X),)


def _two_classes(n=8):
    y = np.arange(n) % 2
    return colour_images(y), y


# ------------------------------------------------------------------- mixup and cutmix


class TestMixing:
    def test_mixup_smooths_multilabel_targets(self, colours):
        """timm's Mixup smooths 0/1 label columns too: label_smoothing reaches it."""
        X, y = colours
        labels = np.column_stack([y == 0, y != 1]).astype(int)
        probas = [
            tiny(mixup=0.4, label_smoothing=s, lr=0.05).fit(X, labels).predict_proba(X)
            for s in (0, 0.4)
        ]
        assert not np.allclose(*probas, atol=1e-4)

    def test_random_state_fixes_the_mixing(self, colours):
        """timm's Mixup draws from numpy's global generator: fit seeds it, and gives
        the caller's state back."""
        X, y = colours
        state = np.random.get_state()  # noqa: NPY002
        probas = [
            tiny(mixup=0.4, cutmix=1.0, random_state=3).fit(X, y).predict_proba(X) for _ in range(2)
        ]
        np.testing.assert_array_equal(*probas)
        assert np.random.get_state()[1].tolist() == state[1].tolist()  # noqa: NPY002

    def test_stage_mixers_and_no_training_accuracy(self, colours):
        X, y = colours
        mixers = Mixers()
        clf = tiny(freeze_depth=2, mixup=0.4, cutmix=1.0, callbacks=[mixers]).fit(X, y)
        # the head stage trains on pooled features: mixup only; the top on feature maps
        assert mixers.stages_ == [(0.4, 0.0), (0.4, 1.0)]
        assert all("train_acc" not in r for r in clf.history_)

    def test_no_mixer_by_default(self, colours):
        X, y = colours
        mixers = Mixers()
        clf = tiny(callbacks=[mixers]).fit(X, y)
        assert mixers.stages_ == [None, None]
        assert all(0 <= r["train_acc"] <= 1 for r in clf.history_)

    def test_mixed_targets_are_soft_and_smoothed(self):
        mixer = batch_mixer(1.0, 0.0, label_smoothing=0.1, n_classes=3, multilabel=False)
        x = torch.arange(8 * 4, dtype=torch.float32).reshape(8, 4)
        y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
        mixed_x, soft = _mix(mixer, (x.clone(), y), "cpu")
        assert soft.shape == (8, 3)
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(8))
        assert float(soft.min()) >= 0.1 / 3 - 1e-6  # smoothed: no exact zeros
        # x_i is mixed with x_{n-1-i} (timm's batch mode) with one lambda
        lam = float((mixed_x[0] - x[7]).sum() / (x[0] - x[7]).sum())
        torch.testing.assert_close(mixed_x, lam * x + (1 - lam) * x.flip(0))

    def test_odd_last_batch_is_dropped(self):
        y = np.arange(23) % 2
        sizes = BatchSizes()
        tiny(mixup=0.2, batch_size=8, callbacks=[sizes]).fit(colour_images(y), y)
        assert sizes.stages_ == [[8, 8], [8, 8]]

    def test_multilabel_targets_mix(self, colours):
        X, y = colours
        Y = np.stack([y != 2, y == 1], axis=1).astype(int)
        clf = tiny(mixup=0.2).fit(X, Y)
        assert clf.predict(X).shape == Y.shape

    def test_odd_batch_size_is_refused(self, colours):
        with pytest.raises(ValueError, match="even batch_size; got batch_size=7"):
            tiny(cutmix=1.0, batch_size=7).fit(*colours)

    def test_sample_weight_with_mixup_is_refused(self, colours):
        X, y = colours
        with pytest.raises(ValueError, match="sample_weight cannot be combined with mixup"):
            tiny(mixup=0.2).fit(X, y, sample_weight=np.ones(len(y)))


# ------------------------------------------------------------------------------- EMA


class TestWeightAverage:
    def test_prediction_uses_the_average_not_the_last_step(self, colours):
        X, y = colours
        snapshots = BackboneSnapshots()
        clf = tiny(freeze_depth=3, lr=0.05, ema=0.9, callbacks=[snapshots]).fit(X, y)
        last_step = snapshots.after_last_step_[-1]
        final = clf.backbone_.state_dict()
        changed = changed_keys(last_step, final)
        head = {k for k in final if k.startswith("classifier")}
        assert head <= changed  # the average differs from the last weights
        first = snapshots.at_train_begin_[0]
        assert not changed_keys(first, final) & {k for k in final if k.startswith("conv_stem")}

    def test_no_average_keeps_the_last_step(self, colours):
        X, y = colours
        snapshots = BackboneSnapshots()
        clf = tiny(freeze_depth=3, callbacks=[snapshots]).fit(X, y)
        assert not changed_keys(snapshots.after_last_step_[-1], clf.backbone_.state_dict())

    @pytest.mark.parametrize("ema", [0, 1, 1.5, -0.1])
    def test_decay_outside_zero_one_is_refused(self, colours, ema):
        with pytest.raises(ValueError, match="'ema' parameter"):
            tiny(ema=ema).fit(*colours)


# ------------------------------------------------------------------------------- TTA


@pytest.fixture(scope="module")
def fitted(colours):
    X, y = colours
    return tiny(freeze_depth=3).fit(X, y)


class TestTTA:
    @pytest.mark.parametrize(
        "tta, dims", [("hflip", [(), (-1,)]), ("flips", [(), (-1,), (-2,), (-2, -1)])]
    )
    def test_probabilities_are_averaged_over_flips(self, fitted, colours, tta, dims):
        X, _ = colours
        backbone = fitted.backbone_.eval()
        tf = eval_transform(fitted.data_config_)
        x = torch.stack([tf(Image.fromarray(img)) for img in X])
        with torch.inference_mode():
            expected = sum(
                torch.softmax(backbone(torch.flip(x, d) if d else x), dim=1) for d in dims
            ) / len(dims)
        fitted.set_params(tta=tta)
        try:
            proba = fitted.predict_proba(X)
        finally:
            fitted.set_params(tta=None)
        np.testing.assert_allclose(proba, expected.numpy(), rtol=1e-5, atol=1e-6)
        assert not np.allclose(proba, fitted.predict_proba(X), atol=1e-7)

    def test_unknown_tta_is_refused(self, colours):
        with pytest.raises(ValueError, match="'tta' parameter"):
            tiny(tta="rotate").fit(*colours)


# ---------------------------------------------------------------------- sample_weight


class TestSampleWeight:
    def test_uniform_weights_equal_no_weights(self, colours):
        X, y = colours
        plain = tiny(freeze_depth=2).fit(X, y).predict_proba(X)
        weighted = tiny(freeze_depth=2).fit(X, y, sample_weight=np.full(len(y), 3.0))
        np.testing.assert_allclose(weighted.predict_proba(X), plain, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("augment", [None, "light"], ids=["cached", "streamed"])
    def test_weights_change_the_model(self, colours, augment):
        X, y = colours
        w = np.where(y == 0, 5.0, 0.5)
        plain = tiny(freeze_depth=2, augment=augment).fit(X, y).predict_proba(X)
        weighted = tiny(freeze_depth=2, augment=augment).fit(X, y, sample_weight=w)
        assert not np.allclose(weighted.predict_proba(X), plain)

    def test_loss_is_the_weighted_mean_of_per_image_losses(self):
        module = TransferModule(torch.nn.Linear(2, 2), [(["weight", "bias"], 0.1)])
        net = TransferNet(
            module=module, criterion=torch.nn.CrossEntropyLoss, criterion__reduction="none"
        ).initialize()
        y_pred = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        y = torch.tensor([0, 0, 1])
        each = torch.nn.functional.cross_entropy(y_pred, y, reduction="none")
        w = torch.tensor([1.0, 0.0, 2.0])
        loss = net.get_loss(y_pred, y, X={"x": None, "sample_weight": w})
        torch.testing.assert_close(loss, (each * w).mean())
        torch.testing.assert_close(net.get_loss(y_pred, y, X=torch.zeros(3)), each.mean())

    @pytest.mark.parametrize(
        "weights, match",
        [
            (np.ones(5), r"shape \(5,\) but X has 24 images"),
            (np.ones((24, 2)), r"shape \(24, 2\) but X has 24 images"),
            (np.r_[np.ones(23), -1.0], "negative values \\(first at index 23"),
            (np.r_[np.ones(3), np.nan, np.ones(20)], "NaN or infinite values \\(first at index 3"),
            (np.zeros(24), "sums to zero"),
            (np.array(["a"] * 24), "1-D array of 24 non-negative numbers"),
            (3.0, "1-D array of 24 non-negative numbers"),
        ],
    )
    def test_bad_weights_are_refused(self, colours, weights, match):
        X, y = colours
        clf = tiny()
        with pytest.raises(ValueError, match=match):
            clf.fit(X, y, sample_weight=weights)
        assert not hasattr(clf, "backbone_")

    @pytest.fixture
    def seen(self, monkeypatch):
        """Lengths of the sample_weight each fit receives (serial searches)."""
        lengths = []
        original = FineTunedClassifier.fit

        def recording(self, X, y, sample_weight=None):
            lengths.append(None if sample_weight is None else len(sample_weight))
            return original(self, X, y, sample_weight=sample_weight)

        monkeypatch.setattr(FineTunedClassifier, "fit", recording)
        return lengths

    def test_grid_search_routes_weights_without_metadata_routing(self, colours, seen):
        X, y = colours
        search = GridSearchCV(tiny(max_epochs=0), {"lr": [1e-3]}, cv=2)
        search.fit(X, y, sample_weight=np.ones(24))
        assert seen == [12, 12, 24]

    def test_grid_search_routes_weights_with_metadata_routing(self, colours, seen):
        X, y = colours
        with sklearn.config_context(enable_metadata_routing=True):
            est = tiny(max_epochs=0).set_fit_request(sample_weight=True)
            est.set_score_request(sample_weight=True)
            GridSearchCV(est, {"lr": [1e-3]}, cv=2).fit(X, y, sample_weight=np.ones(24))
            assert seen == [12, 12, 24]
            with pytest.raises(UnsetMetadataPassedError):
                GridSearchCV(tiny(max_epochs=0), {"lr": [1e-3]}, cv=2).fit(
                    X, y, sample_weight=np.ones(24)
                )


# ------------------------------------------------------------------ batch of one image


class TestLastBatchOfOne:
    @pytest.mark.parametrize("batchnorm", ["train", "frozen"])
    def test_a_last_batch_of_one_is_dropped(self, batchnorm):
        y = np.arange(17) % 2
        sizes = BatchSizes()
        clf = tiny(freeze_depth=0, batch_size=8, batchnorm=batchnorm, callbacks=[sizes])
        clf.fit(colour_images(y), y)
        assert sizes.stages_ == [[8, 8], [8, 8]]

    def test_other_last_batches_are_kept(self):
        y = np.arange(18) % 2
        sizes = BatchSizes()
        tiny(freeze_depth=0, batch_size=8, callbacks=[sizes]).fit(colour_images(y), y)
        assert sizes.stages_ == [[8, 8, 2], [8, 8, 2]]
