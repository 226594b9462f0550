"""No silent wrong answer, no obscure error: mistakes in parameters, targets, callbacks,
augmentations and weight files raise errors that say what was received and what is
expected, and Ctrl-C stops a fit instead of returning a half-trained model."""

from __future__ import annotations

import re
import signal
from numbers import Integral

import numpy as np
import pandas as pd
import pytest
import torch
from _finetune_fixtures import colour_images, tiny
from conftest import make_images, tiny_extractor
from PIL import Image
from sklearn.base import BaseEstimator
from skorch.callbacks import Callback

from sktransfer import FineTunedClassifier, FineTunedRegressor, InvalidParameterError
from sktransfer._params import validate_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = np.array([0, 1] * 4)
BOOL_HINT = "A bool is not accepted as a number."


@pytest.fixture(scope="module")
def colours():
    return colour_images(LABELS), LABELS


class EpochCounter(Callback):
    """Counts the epochs that end and the stages that end."""

    def __init__(self):
        self.epochs_ = 0
        self.train_ends_ = 0

    def on_epoch_end(self, net, **kwargs):
        self.epochs_ += 1

    def on_train_end(self, net, **kwargs):
        self.train_ends_ += 1


class CtrlCAtFirstEpochEnd(EpochCounter):
    """Presses Ctrl-C (sends SIGINT to this process) at the end of the first epoch."""

    def on_epoch_end(self, net, **kwargs):
        super().on_epoch_end(net, **kwargs)
        if self.epochs_ == 1:
            signal.raise_signal(signal.SIGINT)


class StopAtFirstEpochEnd(EpochCounter):
    """Ends each stage after its first epoch, as skorch's EarlyStopping does: by raising
    KeyboardInterrupt."""

    def on_epoch_end(self, net, **kwargs):
        super().on_epoch_end(net, **kwargs)
        raise KeyboardInterrupt


# ------------------------------------------------------------- booleans are not ints


class Counts(BaseEstimator):
    _param_constraints = {
        "k": [Integral],
        "sizes": [None, list, tuple],
        "verbose": ["verbose"],
    }

    def __init__(self, k=1, sizes=None, verbose=False):
        self.k, self.sizes, self.verbose = k, sizes, verbose


class TestBooleansAreNotNumbers:
    @pytest.mark.parametrize(
        "params",
        [
            {"k": np.int64(3), "sizes": [1, 2]},
            {"sizes": (np.int32(4),), "verbose": True},
            {"verbose": np.True_},
        ],
    )
    def test_ints_lists_of_ints_and_verbose_flags_pass(self, params):
        validate_params(Counts(**params))

    @pytest.mark.parametrize(
        "params, message",
        [
            ({"k": True}, r"'k' parameter of Counts must be an int\. Got True instead\."),
            ({"k": np.False_}, r"'k' parameter of Counts must be an int\. Got "),
            ({"sizes": [1, True]}, r"'sizes' parameter .* Got \[1, True\] instead\."),
            ({"sizes": (np.True_,)}, r"'sizes' parameter"),
        ],
    )
    def test_a_bool_for_an_int_type_or_in_a_list_is_rejected(self, params, message):
        with pytest.raises(InvalidParameterError, match=message + ".*" + re.escape(BOOL_HINT)):
            validate_params(Counts(**params))

    @pytest.mark.parametrize(
        "estimator, params",
        [
            (FineTunedClassifier, {"freeze_depth": True}),
            (FineTunedClassifier, {"batch_size": True}),
            (FineTunedClassifier, {"max_epochs": False}),
            (FineTunedClassifier, {"image_size": [True, 32]}),
            (FineTunedRegressor, {"head_epochs": True}),
        ],
    )
    def test_fine_tuners_reject_a_bool_for_an_int(self, colours, estimator, params):
        X, y = colours
        ((name, value),) = params.items()
        match = rf"The '{name}' parameter of {estimator.__name__} must be .* Got "
        match += re.escape(f"{value!r} instead. {BOOL_HINT}")
        with pytest.raises(InvalidParameterError, match=match):
            tiny(estimator, **params).fit(X, y)

    @pytest.mark.parametrize("layer", [True, False, [True], [0, np.True_], (1, False)])
    def test_the_extractor_rejects_a_bool_as_a_block_index(self, layer):
        """``layer=True`` used to embed block 1, and ``layer=[True]`` too."""
        match = r"The 'layer' parameter of PretrainedFeatureExtractor must be None, one of "
        with pytest.raises(InvalidParameterError, match=match + ".*" + re.escape(BOOL_HINT)):
            tiny_extractor(layer=layer).fit()


# ---------------------------------------------------------------------------- callbacks


class TestCallbacks:
    @pytest.mark.parametrize(
        "callbacks, message",
        [
            (["x"], r"callbacks\[0\] is 'x' \(str\)"),
            ([EpochCounter(), 3], r"callbacks\[1\] is 3 \(int\)"),
            ([("counter", "x")], r"callbacks\[0\] is \('counter', 'x'\) \(tuple\)"),
            ([(1, EpochCounter())], r"callbacks\[0\] is \(1, .*\) \(tuple\)"),
        ],
    )
    def test_an_element_that_is_not_a_callback_is_named(self, colours, callbacks, message):
        X, y = colours
        expected = (
            r": each element of callbacks must be a skorch Callback instance \(e\.g\. "
            r"skorch\.callbacks\.EpochScoring\('f1_macro'\)\) or a \(name, callback\) pair\."
        )
        with pytest.raises(TypeError, match=message + expected):
            tiny(callbacks=callbacks).fit(X, y)

    def test_a_named_pair_is_a_callback(self, colours):
        X, y = colours
        counter = EpochCounter()
        clf = tiny(callbacks=[("epochs_seen", counter)]).fit(X, y)
        assert (counter.epochs_, counter.train_ends_) == (2, 2)  # head stage, then the rest
        assert len(clf.history_) == 2


# ------------------------------------------------------------------------------ targets


EXPECTED_Y = re.escape(
    "an array-like of targets: 1-D (one per image) or 2-D (one row per image, all rows "
    "of the same length)"
)
RAGGED = [[0, 1]] * 4 + [[0]] * 4


class TestTargets:
    @pytest.mark.parametrize("estimator", [FineTunedClassifier, FineTunedRegressor])
    @pytest.mark.parametrize("y, got", [(3, "3 (int)"), ("cat", "'cat' (str)")])
    def test_a_single_value_is_named(self, colours, estimator, y, got):
        X, _ = colours
        match = f"y must be {EXPECTED_Y}; got a single value, {re.escape(got)}\\.$"
        with pytest.raises(ValueError, match=match):
            tiny(estimator).fit(X, y)

    @pytest.mark.parametrize("estimator", [FineTunedClassifier, FineTunedRegressor])
    def test_ragged_rows_are_named(self, colours, estimator):
        X, _ = colours
        match = (
            r"^y is ragged: the row of image 0 holds 2 values but the row of image 4 holds "
            rf"1 value\. y must be {EXPECTED_Y}\.$"
        )
        with pytest.raises(ValueError, match=match):
            tiny(estimator).fit(X, RAGGED)

    def test_a_row_that_is_a_single_value_among_lists_is_ragged(self, colours):
        X, _ = colours
        y = [[0.5, 1.0]] * 3 + [2.0] + [[0.5, 1.0]] * 4
        match = r"row of image 0 holds 2 values but the row of image 3 holds a single value"
        with pytest.raises(ValueError, match=match):
            tiny(FineTunedRegressor).fit(X, y)

    def test_ragged_rows_are_named_before_the_domain_split(self, colours):
        X, _ = colours
        sample_domain = np.array([1] * 6 + [-2] * 2)
        with pytest.raises(ValueError, match=r"^y is ragged: .* row of image 4 holds 1 value"):
            tiny(domain_adaptation="adabn").fit(X, RAGGED, sample_domain=sample_domain)

    def test_a_series_of_rows_is_asked_to_be_stacked(self, colours):
        X, _ = colours
        y = pd.Series([[0.5, 1.0]] * 8)
        match = (
            r"^y is a 1-D container of rows \(each a list of 2 values\); stack them into a "
            r"2-D array with one row per image, e\.g\. np\.stack\(list\(y\)\)\.$"
        )
        with pytest.raises(ValueError, match=match):
            tiny(FineTunedRegressor).fit(X, y)


# ------------------------------------------------------------------------- augmentation


class ArrayForBlackImages:
    """Returns the pixels of a black image as ``kind`` instead of a PIL image."""

    def __init__(self, kind="array"):
        self.kind = kind

    def __call__(self, image):
        pixels = np.asarray(image)
        if pixels.max() > 0:
            return image
        return torch.from_numpy(pixels.copy()) if self.kind == "tensor" else pixels


@pytest.fixture(scope="module")
def files_with_a_black_image(tmp_path_factory):
    """Eight PNG files; the one at index 5 is all black."""
    folder = tmp_path_factory.mktemp("augment")
    images = make_images(8, 32, 32) | 1  # no other image is all black
    images[5] = 0
    paths = [folder / f"{i}.png" for i in range(len(images))]
    for path, pixels in zip(paths, images, strict=True):
        Image.fromarray(pixels).save(path)
    return paths


class TestAugment:
    @pytest.mark.parametrize(
        "kind, returned, num_workers",
        [
            ("array", "numpy.ndarray", 0),
            ("tensor", "torch.Tensor", 0),
            ("array", "numpy.ndarray", 1),
        ],
        ids=["array", "tensor", "array-in-a-worker-process"],
    )
    def test_an_augment_that_returns_no_pil_image_names_the_image(
        self, files_with_a_black_image, kind, returned, num_workers
    ):
        paths = files_with_a_black_image
        clf = tiny(augment=ArrayForBlackImages(kind), num_workers=num_workers, max_epochs=0)
        match = (
            rf"The augment callable {__name__}\.ArrayForBlackImages returned a {returned} for "
            rf"image 5 \({re.escape(repr(str(paths[5])))}\): it must map a PIL image to a "
            r"PIL image"
        )
        with pytest.raises(TypeError, match=match):
            clf.fit(paths, LABELS)


# ------------------------------------------------------------------------- weight files


class TestWeightFiles:
    @pytest.fixture
    def garbage(self, tmp_path):
        path = tmp_path / "model.safetensors"
        path.write_bytes(b"not a safetensors file" * 8)
        return path

    def test_a_garbage_safetensors_file_is_named_by_the_extractor(self, garbage):
        match = rf"^Could not read {re.escape(repr(str(garbage)))} as a safetensors file: "
        with pytest.raises(ValueError, match=match + r".*safetensors\.torch\.save_file"):
            tiny_extractor(weights=garbage).fit()

    def test_a_garbage_safetensors_file_is_named_by_the_fine_tuner(self, colours, garbage):
        X, y = colours
        match = rf"^Could not read {re.escape(repr(str(garbage)))} as a safetensors file"
        with pytest.raises(ValueError, match=match):
            tiny(weights=garbage).fit(X, y)


# ---------------------------------------------------------------------------- Ctrl-C


@pytest.fixture
def interruptible():
    """Python's own SIGINT handler, as in a terminal: a process started in the
    background (nohup, some CI runners) inherits SIGINT ignored, and Ctrl-C cannot
    reach it at all."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class TestKeyboardInterrupt:
    @pytest.mark.usefixtures("interruptible")
    def test_ctrl_c_during_training_stops_fit(self, colours):
        """skorch's ``partial_fit`` swallows KeyboardInterrupt: fit used to go on to the
        next stage and return a half-trained model as if nothing had happened."""
        X, y = colours
        ctrl_c = CtrlCAtFirstEpochEnd()
        clf = tiny(head_epochs=1, max_epochs=3, callbacks=[ctrl_c])
        handler = signal.getsignal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            clf.fit(X, y)
        assert ctrl_c.epochs_ == 1  # no later epoch, no later stage
        assert ctrl_c.train_ends_ == 1  # callbacks still get on_train_end to clean up
        assert not hasattr(clf, "history_")  # not fitted
        assert signal.getsignal(signal.SIGINT) is handler

    def test_a_callback_that_stops_training_still_ends_only_its_stage(self, colours):
        """skorch's callbacks stop training by raising KeyboardInterrupt (EarlyStopping):
        that is not a Ctrl-C, and the fit goes on to the next stage and succeeds."""
        X, y = colours
        stop = StopAtFirstEpochEnd()
        clf = tiny(head_epochs=2, max_epochs=3, callbacks=[stop]).fit(X, y)
        assert (stop.epochs_, stop.train_ends_) == (2, 2)
        assert [row["stage"] for row in clf.history_] == ["head", "finetune"]
