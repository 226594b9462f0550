"""Every accepted input form, the pixel-scaling rule, every promised error, lazy decoding."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_same_embedding, make_images, tiny_extractor
from PIL import Image

from sktransfer._images import FileSource, ImageSource, as_images, iter_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_png(folder, arrays, prefix="img"):
    paths = []
    for i, array in enumerate(arrays):
        path = Path(folder) / f"{prefix}{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, images):
    """PNG files holding exactly ``images``."""
    return write_png(tmp_path_factory.mktemp("pngs"), images)


@pytest.fixture(scope="module")
def reference(one_torch_thread, fitted, images):
    """Embeddings of the uint8 (n, h, w, 3) array: what every equivalent form must give."""
    return fitted.transform(images)


class TestSamePictureSameEmbedding:
    @pytest.mark.parametrize(
        "convert",
        [
            pytest.param(lambda x: x.astype(np.float32) / 255, id="float32-in-0-1"),
            pytest.param(lambda x: x.astype(np.float64) / 255, id="float64-in-0-1"),
            pytest.param(lambda x: x.astype(np.float32), id="float32-in-0-255"),
            pytest.param(lambda x: x.astype(np.int64), id="int64"),
            pytest.param(lambda x: x.astype(np.uint16), id="uint16"),
            pytest.param(lambda x: np.ascontiguousarray(np.moveaxis(x, -1, 1)), id="nchw"),
            pytest.param(lambda x: np.moveaxis(x, -1, 1) / 255.0, id="nchw-float"),
            pytest.param(lambda x: np.repeat(x, 2, axis=2)[:, :, ::2], id="strided-view"),
            pytest.param(list, id="list-of-arrays"),
            pytest.param(tuple, id="tuple-of-arrays"),
            pytest.param(lambda x: [np.moveaxis(i, -1, 0) for i in x], id="list-of-chw"),
            pytest.param(lambda x: [i / 255.0 for i in x], id="list-of-float"),
            pytest.param(lambda x: [Image.fromarray(i) for i in x], id="list-of-pil"),
            pytest.param(lambda x: np.concatenate([x, np.full_like(x[..., :1], 7)], -1), id="rgba"),
        ],
    )
    def test_array_forms(self, fitted, images, reference, convert):
        np.testing.assert_array_equal(fitted.transform(convert(images)), reference)

    @pytest.mark.parametrize(
        "wrap",
        [
            pytest.param(lambda p: [str(x) for x in p], id="list-of-str"),
            pytest.param(list, id="list-of-path"),
            pytest.param(tuple, id="tuple-of-path"),
            pytest.param(lambda p: np.array([str(x) for x in p]), id="ndarray-of-str"),
            pytest.param(lambda p: np.array(p, dtype=object), id="ndarray-of-path"),
            pytest.param(lambda p: pd.Series([str(x) for x in p]), id="series-of-str"),
            pytest.param(lambda p: pd.Series(p), id="series-of-path"),
            pytest.param(lambda p: pd.DataFrame({"file": [str(x) for x in p]}), id="dataframe"),
        ],
    )
    def test_path_forms(self, fitted, pngs, reference, wrap):
        np.testing.assert_array_equal(fitted.transform(wrap(pngs)), reference)

    @pytest.mark.parametrize(
        "convert",
        [
            pytest.param(lambda g: g[..., None], id="nhw1"),
            pytest.param(lambda g: g[:, None], id="n1hw"),
            pytest.param(lambda g: np.repeat(g[..., None], 3, axis=-1), id="nhw3-repeated"),
            pytest.param(lambda g: g / 255.0, id="float"),
            pytest.param(lambda g: [Image.fromarray(i, mode="L") for i in g], id="pil-L"),
            pytest.param(list, id="list-of-hw"),
        ],
    )
    def test_greyscale_forms(self, fitted, convert):
        grey = make_images(3, channels=None, seed=3)
        np.testing.assert_array_equal(fitted.transform(convert(grey)), fitted.transform(grey))

    def test_files_of_each_mode_match_their_decoded_arrays(self, fitted, image_files):
        for path, array in image_files:
            from_file = fitted.transform([path])
            np.testing.assert_array_equal(from_file, fitted.transform([array]), err_msg=path.name)

    def test_rgba_png_drops_alpha(self, fitted, image_files):
        path, rgba = next((p, a) for p, a in image_files if p.name == "rgba.png")
        np.testing.assert_array_equal(fitted.transform([path]), fitted.transform([rgba[..., :3]]))

    def test_images_of_different_sizes(self, fitted, image_files):
        arrays = [array for _, array in image_files]
        assert len({a.shape[:2] for a in arrays}) == len(arrays)
        together = fitted.transform([Image.fromarray(a) for a in arrays])
        assert together.shape == (len(arrays), fitted.n_features_out_)
        for row, array in zip(together, arrays, strict=True):
            assert_same_embedding(row, fitted.transform([array])[0])


class TestPixelScaling:
    def test_rule_applies_to_the_whole_array(self, fitted):
        # A float array in [0, 255] with one very dark image: that image must not be
        # stretched by 255 because its own values happen to lie in [0, 1].
        bright = make_images(1, seed=4).astype(np.float64)
        dark = np.random.default_rng(5).integers(0, 2, bright.shape).astype(np.float64)
        X = np.concatenate([bright, dark])
        np.testing.assert_array_equal(fitted.transform(X), fitted.transform(X.astype(np.uint8)))

    def test_rule_applies_per_image_of_a_list(self, fitted):
        image = make_images(1, seed=6)[0]
        out = fitted.transform([image.astype(np.float64), image / 255.0])
        np.testing.assert_array_equal(out[0], out[1])

    def test_float_values_are_rounded_not_truncated(self, fitted):
        image = make_images(1, seed=7)[:, :, :, :]
        nudged = image.astype(np.float64) - 0.4  # rounds back to ``image``
        nudged[image == 0] = 0
        np.testing.assert_array_equal(fitted.transform(nudged), fitted.transform(image))


class TestErrors:
    def test_empty_array(self, fitted):
        with pytest.raises(ValueError, match="at least one image, got an empty array"):
            fitted.transform(np.empty((0, 32, 32, 3), dtype=np.uint8))

    @pytest.mark.parametrize("empty", [[], (), pd.Series([], dtype=object)], ids=repr)
    def test_empty_collection(self, fitted, empty):
        with pytest.raises(ValueError, match="at least one image, got an empty list"):
            fitted.transform(empty)

    @pytest.mark.parametrize("shape", [(4,), (4, 32), (2, 3, 8, 8, 3)])
    def test_wrong_ndim(self, fitted, shape):
        with pytest.raises(ValueError, match=f"got {len(shape)} dimensions"):
            fitted.transform(np.zeros(shape, dtype=np.uint8))

    def test_no_channel_axis(self, fitted):
        with pytest.raises(ValueError, match=r"Cannot find the channel axis .*\(2, 5, 8, 7\)"):
            fitted.transform(np.zeros((2, 5, 8, 7), dtype=np.uint8))

    def test_bad_image_in_list(self, fitted):
        with pytest.raises(ValueError, match=r"Image 1 has shape \(8, 8, 2\)"):
            fitted.transform([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 2), np.uint8)])

    def test_missing_file_names_index_and_path(self, fitted, pngs, tmp_path):
        missing = tmp_path / "nope.png"
        with pytest.raises(
            ValueError, match=rf"Image 2 \({re.escape(repr(str(missing)))}\) does not exist"
        ):
            fitted.transform([pngs[0], pngs[1], missing])

    def test_missing_file_is_reported_before_anything_is_embedded(
        self, fitted, pngs, tmp_path, monkeypatch
    ):
        calls = []
        monkeypatch.setattr(FileSource, "load", lambda self, i: calls.append(i))
        with pytest.raises(ValueError, match="does not exist"):
            fitted.transform([*pngs, tmp_path / "nope.png"])
        assert calls == []

    def test_directory_is_not_a_file(self, fitted, tmp_path):
        with pytest.raises(ValueError, match=r"Image 0 .* is not a file"):
            fitted.transform([tmp_path])

    def test_non_image_file(self, fitted, tmp_path):
        path = tmp_path / "notes.png"
        path.write_text("not an image")
        with pytest.raises(ValueError, match=r"Image 0 .*notes\.png.* is not an image file"):
            fitted.transform([path])

    @pytest.mark.parametrize("suffix", [".png", ".jpg"])
    def test_truncated_file(self, fitted, tmp_path, suffix):
        path = tmp_path / f"cut{suffix}"
        Image.fromarray(make_images(1, 64, 64, seed=8)[0]).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=rf"Image 0 .*cut\{suffix}.* is truncated or corrupt"):
            fitted.transform([path])

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_pixels(self, fitted, bad):
        X = make_images(2) / 255.0
        X[1, 3, 4, 2] = bad
        with pytest.raises(ValueError, match=r"NaN or infinite .*\(1, 3, 4, 2\)"):
            fitted.transform(X)

    def test_non_finite_pixels_in_list(self, fitted):
        X = [np.zeros((8, 8)), np.full((8, 8), np.nan)]
        with pytest.raises(ValueError, match="image 1 contains NaN or infinite"):
            fitted.transform(X)

    @pytest.mark.parametrize(
        ("X", "message"),
        [
            (np.full((1, 8, 8), -0.5), r"float pixel values in \[-0.5, -0.5\]"),
            (
                np.full((1, 8, 8), 256.0),
                r"float pixel values in \[256, 256\]; expected \[0, 255\] or, for floats, \[0, 1\]",
            ),
            (np.full((1, 8, 8), 300, dtype=np.int32), r"integer pixel values in \[300, 300\]"),
            (np.full((1, 8, 8), -1, dtype=np.int8), r"integer pixel values in \[-1, -1\]"),
        ],
    )
    def test_out_of_range_pixels(self, fitted, X, message):
        with pytest.raises(ValueError, match=message):
            fitted.transform(X)

    def test_sixteen_bit_file_out_of_range(self, fitted, tmp_path):
        # The same values as a uint16 array raise (above); as a 16-bit PNG they must not
        # be silently clipped to 255 by PIL's convert("RGB").
        path = tmp_path / "g16.png"
        Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(path)
        with Image.open(path) as img:
            assert img.mode == "I;16"
        with pytest.raises(ValueError, match=r"g16\.png"):
            fitted.transform([path])

    def test_sixteen_bit_pil_image_out_of_range(self, fitted):
        img = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
        with pytest.raises(ValueError, match=r"(?i)image 0"):
            fitted.transform([img])

    @pytest.mark.parametrize("dtype", [bool, np.complex64])
    def test_unsupported_dtype(self, fitted, dtype):
        with pytest.raises(TypeError, match=f"dtype {np.dtype(dtype)}"):
            fitted.transform(np.zeros((1, 8, 8), dtype=dtype))

    def test_mixed_types(self, fitted, pngs, images):
        with pytest.raises(
            TypeError, match="element 0 is a file path but element 1 is a numpy array"
        ):
            fitted.transform([pngs[0], images[0]])
        with pytest.raises(
            TypeError, match="element 0 is a PIL image but element 1 is a file path"
        ):
            fitted.transform([Image.fromarray(images[0]), str(pngs[0])])

    def test_unsupported_element(self, fitted):
        with pytest.raises(TypeError, match="Element 1 has unsupported type int"):
            fitted.transform([np.zeros((8, 8)), 3])

    def test_unsupported_container(self, fitted):
        with pytest.raises(TypeError, match="Unsupported input type dict"):
            fitted.transform({"a": 1})

    def test_multi_column_dataframe(self, fitted, pngs):
        frame = pd.DataFrame({"path": [str(p) for p in pngs], "label": range(len(pngs))})
        with pytest.raises(
            ValueError, match=r"one-column DataFrame .* got 2 columns \['path', 'label'\]"
        ):
            fitted.transform(frame)

    def test_two_dimensional_array_of_paths(self, fitted, pngs):
        with pytest.raises(
            ValueError, match=r"1-D array of file paths, got an array of shape \(2, 1\)"
        ):
            fitted.transform(np.array([[str(pngs[0])], [str(pngs[1])]]))

    @pytest.mark.parametrize("single", ["str", "path", "pil"])
    def test_single_image_not_in_a_list(self, fitted, pngs, single):
        X = {"str": str(pngs[0]), "path": pngs[0], "pil": Image.new("RGB", (8, 8))}[single]
        with pytest.raises(TypeError, match=r"single .* Wrap it in a list: \[image\]"):
            fitted.transform(X)

    def test_fit_validates_its_input(self):
        with pytest.raises(ValueError, match="at least one image"):
            tiny_extractor().fit([])


class TestLazyDecoding:
    def test_wrapping_paths_opens_no_file(self, pngs, monkeypatch):
        opened = []
        monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
        source = as_images(pngs)
        assert isinstance(source, FileSource) and len(source) == len(pngs)
        assert opened == []

    def test_fit_on_paths_opens_no_file(self, pngs, tiny_checkpoint, monkeypatch):
        calls = []
        monkeypatch.setattr(FileSource, "load", lambda self, i: calls.append(i))
        tiny_extractor(weights=tiny_checkpoint).fit(pngs)
        assert calls == []

    @pytest.mark.parametrize("num_workers", [0, 1, 2])
    def test_only_batches_in_flight_are_decoded(self, pngs, num_workers):
        class CountingSource(ImageSource):
            def __init__(self, paths):
                self.files = FileSource(paths)
                self.calls = []  # list.append is atomic across the worker threads

            def __len__(self):
                return len(self.files)

            def load(self, i):
                self.calls.append(i)
                return self.files.load(i)

        source = CountingSource(pngs * 4)  # 24 files
        batch_size = 3

        def to_tensor(img):
            return torch.from_numpy(np.asarray(img, dtype=np.float32).copy())

        batches = iter_batches(source, to_tensor, batch_size, num_workers)
        seen = 0
        for k, (positions, batch) in enumerate(batches):
            np.testing.assert_array_equal(
                positions, np.arange(k * batch_size, (k + 1) * batch_size)
            )
            assert batch.shape[0] == batch_size
            seen += batch_size
            # The batch being consumed plus at most one prefetched batch per worker.
            assert seen <= len(source.calls) <= seen + num_workers * batch_size
        assert sorted(source.calls) == list(range(len(source)))

    def test_transform_decodes_one_batch_per_forward(self, pngs, tiny_checkpoint, monkeypatch):
        extractor = tiny_extractor(weights=tiny_checkpoint, batch_size=2).fit()
        loads, at_forward = [], []
        original_load, original_forward = FileSource.load, type(extractor)._forward

        def counting_load(self, i):
            loads.append(i)
            return original_load(self, i)

        def recording_forward(self, x):
            at_forward.append((len(loads), x.shape[0]))
            return original_forward(self, x)

        monkeypatch.setattr(FileSource, "load", counting_load)
        monkeypatch.setattr(type(extractor), "_forward", recording_forward)
        extractor.transform(pngs)
        assert at_forward == [(2, 2), (4, 2), (6, 2)]
