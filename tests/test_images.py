"""Every accepted input form, the pixel-scaling rule, every promised error, lazy decoding."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_same_embedding, make_images, tiny_extractor
from PIL import Image

from sktransfer._images import (
    _KEYS,
    EncodedSource,
    FileSource,
    ImageSource,
    as_images,
    iter_batches,
)

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
            pytest.param(lambda x: x.astype(np.uint16) * 257, id="uint16-in-0-65535"),
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
        grey = make_images(5, channels=None, seed=3)  # (3, h, w) would be ambiguous
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

            def key(self, i):
                return self.files.key(i)

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
        original_load, original_forward = FileSource.decoded, type(extractor)._forward

        def counting_load(self, i):
            loads.append(i)
            return original_load(self, i)

        def recording_forward(self, x):
            at_forward.append((len(loads), x.shape[0]))
            return original_forward(self, x)

        monkeypatch.setattr(FileSource, "decoded", counting_load)  # what inference decodes with
        monkeypatch.setattr(type(extractor), "_forward", recording_forward)
        extractor.transform(pngs)
        assert at_forward == [(2, 2), (4, 2), (6, 2)]


class TestAmbiguousStacks:
    @pytest.mark.parametrize(
        ("shape", "reading"),
        [
            ((32, 32, 3), r"one colour image \(h, w, c\) of 32x32"),
            ((32, 32, 4), r"one RGBA image \(h, w, c\) of 32x32"),
            ((32, 32, 1), r"one greyscale image \(h, w, c\) of 32x32"),
            ((3, 32, 32), r"one colour image \(c, h, w\) of 32x32"),
            ((4, 32, 32), r"one RGBA image \(c, h, w\) of 32x32"),
            ((3, 8, 3), r"one colour image \(h, w, c\) of 3x8 or one colour image \(c, h, w\)"),
        ],
    )
    def test_one_image_without_batch_axis_raises(self, shape, reading):
        n, h, w = shape
        with pytest.raises(ValueError) as info:
            as_images(np.zeros(shape, dtype=np.uint8))
        message = str(info.value)
        assert f"Ambiguous array of shape {shape}" in message
        assert re.search(reading, message)
        assert f"or as {n} greyscale images of {h}x{w}" in message
        assert "add the batch axis: X[None] (or pass [X])" in message
        assert "add a channel axis to make the stack unambiguous: X[..., None]" in message

    def test_fit_and_transform_raise(self, fitted):
        X = make_images(1, 32, 32)[0]  # (32, 32, 3): one colour image, no batch axis
        with pytest.raises(ValueError, match="Ambiguous array"):
            fitted.transform(X)
        with pytest.raises(ValueError, match="Ambiguous array"):
            tiny_extractor().fit(X)

    def test_both_fixes_work(self, fitted):
        image = make_images(1, 32, 32, seed=30)[0]
        np.testing.assert_array_equal(fitted.transform(image[None]), fitted.transform([image]))
        grey = make_images(3, 32, 32, channels=None, seed=31)
        assert fitted.transform(grey[..., None]).shape == (3, fitted.n_features_out_)

    @pytest.mark.parametrize("shape", [(5, 32, 32), (1, 8, 8), (2, 40, 48)])
    def test_unambiguous_greyscale_stacks_still_work(self, fitted, shape):
        grey = np.random.default_rng(32).integers(0, 256, shape, dtype=np.uint8)
        out = fitted.transform(grey)
        assert out.shape == (shape[0], fitted.n_features_out_)
        np.testing.assert_array_equal(out, fitted.transform(grey[..., None]))

    def test_lists_of_single_images_are_not_affected(self, fitted):
        image = make_images(1, 32, 32, seed=33)[0]
        assert fitted.transform([image, np.moveaxis(image, -1, 0)]).shape[0] == 2


class TestFloatRange:
    @pytest.mark.parametrize(("value", "clipped"), [(1.0001, 255), (-0.004, 0)])
    def test_tiny_overshoot_is_a_zero_one_image_clipped(self, fitted, images, value, clipped):
        # Before: 1.0001 made the array a [0, 255] one (every image embedded as black);
        # -0.004 raised.
        X = images / 255.0
        X[1, 0, 0, 0] = value  # a resize (bicubic, Lanczos) overshoots [0, 1] a little
        expected = images.copy()
        expected[1, 0, 0, 0] = clipped
        np.testing.assert_array_equal(fitted.transform(X), fitted.transform(expected))

    @pytest.mark.parametrize("edge", [1.01, -0.01])
    def test_overshoot_edges_are_tolerated(self, edge):
        X = np.full((1, 8, 8), 0.5)
        X[0, 0, 0] = edge
        source = as_images(X)
        assert source.scale == 255.0
        assert np.asarray(source.load(0))[0, 0, 0] == (255 if edge > 1 else 0)

    @pytest.mark.parametrize("convert", [np.asarray, list], ids=["array", "list"])
    def test_max_between_one_and_two_is_ambiguous(self, images, convert):
        X = images[:2] / 255.0
        X[1, 3, 4, 2] = 1.5
        where = "the input array" if convert is np.asarray else "image 1"
        index = r"\(1, 3, 4, 2\)" if convert is np.asarray else r"\(3, 4, 2\)"
        with pytest.raises(ValueError) as info:
            as_images(convert(X))
        message = str(info.value)
        assert message.startswith(f"{where} has float pixel values in [0, 1.5]")
        assert re.search(rf"largest at index {index}", message)
        assert "too large for a [0, 1] image, even allowing 0.01 of resizing overshoot" in message
        assert "clip them: np.clip(X, 0, 1)" in message
        assert "convert them to uint8" in message

    def test_max_of_two_or_more_is_zero_to_255(self, fitted):
        X = np.zeros((1, 8, 8, 3))
        X[0, 0, 0] = 2.0
        np.testing.assert_array_equal(fitted.transform(X), fitted.transform(X.astype(np.uint8)))
        assert as_images(X).scale == 1.0

    def test_large_negative_values_still_raise(self):
        X = np.full((1, 8, 8), 0.5)
        X[0, 0, 0] = -0.02
        with pytest.raises(ValueError, match=r"float pixel values in \[-0.02, 0.5\]"):
            as_images(X)

    def test_float_pil_image_follows_the_rule(self):
        img = Image.fromarray(np.full((8, 8), 1.5, dtype=np.float32), mode="F")
        with pytest.raises(ValueError, match=r"Image 0 has float pixel values in \[1.5, 1.5\]"):
            as_images([img]).load(0)


class TestSixteenBit:
    """16-bit images are read by their type (mode, format, dtype), never by their values:
    [0, 65535] scaled to [0, 255], whether dark or bright."""

    DARK = np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) % 256  # all <= 255
    BRIGHT = (np.arange(48 * 40) * 65535 // (48 * 40 - 1)).astype(np.uint16).reshape(48, 40)

    @staticmethod
    def eight_bit(pixels):
        return np.rint(pixels / 257).astype(np.uint8)

    @pytest.mark.parametrize("suffix, mode", [(".png", "I;16"), (".tif", "I;16"), (".pgm", "I")])
    def test_files_of_one_folder_dark_or_bright(self, fitted, tmp_path, suffix, mode):
        paths = []
        for name, pixels in [("dark", self.DARK), ("bright", self.BRIGHT)]:
            paths.append(tmp_path / f"{name}{suffix}")
            Image.fromarray(pixels).save(paths[-1])
            with Image.open(paths[-1]) as img:
                assert img.mode == mode
        expected = [self.eight_bit(self.DARK), self.eight_bit(self.BRIGHT)]
        source = as_images(paths)
        for i, pixels in enumerate(expected):
            np.testing.assert_array_equal(np.asarray(source.load(i)), np.dstack([pixels] * 3))
        np.testing.assert_array_equal(fitted.transform(paths), fitted.transform(expected))

    def test_pil_images_and_uint16_arrays_as_their_files(self, fitted, tmp_path):
        path = tmp_path / "dark.png"
        Image.fromarray(self.DARK).save(path)
        expected = fitted.transform([self.eight_bit(self.DARK)])
        with Image.open(path) as opened:
            np.testing.assert_array_equal(fitted.transform([opened]), expected)
        np.testing.assert_array_equal(fitted.transform([Image.fromarray(self.DARK)]), expected)
        np.testing.assert_array_equal(fitted.transform(self.DARK[None, ..., None]), expected)
        big_endian = [self.DARK.astype(">u2")]
        np.testing.assert_array_equal(fitted.transform(big_endian), expected)

    def test_mode_i_of_no_sixteen_bit_format_is_refused_beyond_255(self, fitted):
        img = Image.fromarray(self.BRIGHT.astype(np.int32))
        assert img.mode == "I"
        message = (
            r"Image 0 \(mode I: 32-bit integers of no stated bit depth\) has integer pixel "
            r"values in \[0, 65535\]; expected \[0, 255\] for int32 pixels\..*16-bit "
            r"images, pass them as uint16 \(X\.astype\(np\.uint16\)\)"
        )
        with pytest.raises(ValueError, match=message):
            fitted.transform([img])
        dark = Image.fromarray(self.DARK.astype(np.int32))
        eight_bit = [self.DARK.astype(np.uint8)]  # mode I within [0, 255]: as before
        np.testing.assert_array_equal(fitted.transform([dark]), fitted.transform(eight_bit))

    def test_other_integer_arrays_beyond_255_point_to_uint16(self, fitted):
        with pytest.raises(ValueError, match=r"pass them as uint16 \(X\.astype\(np\.uint16\)\)"):
            fitted.transform(self.BRIGHT[None].astype(np.int64)[..., None])


def palette_image(indices, palette):
    img = Image.fromarray(indices, mode="P")
    img.putpalette([c for colour in palette for c in colour])
    return img


class TestPILKeys:
    INDICES = (np.arange(64).reshape(8, 8) % 3).astype(np.uint8)

    def test_palettes_are_part_of_the_key(self):
        a = palette_image(self.INDICES, [(0, 0, 0), (255, 0, 0), (0, 255, 0)])
        b = palette_image(self.INDICES, [(0, 0, 0), (0, 0, 255), (9, 9, 9)])
        source = as_images([a, b])
        assert source.key(0) != source.key(1)

    def test_key_is_the_decoded_rgb_pixels(self):
        # What is embedded is the RGB image: any mode that decodes to the same RGB pixels
        # shares its key, and nothing else (mode, palette, alpha) enters it.
        rgb = np.random.default_rng(34).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        grey = rgb[..., 0]
        alpha = np.full((8, 8, 1), 7, dtype=np.uint8)
        palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
        pairs = [
            (Image.fromarray(grey, mode="L"), Image.fromarray(np.stack([grey] * 3, -1))),
            (Image.fromarray(np.concatenate([rgb, alpha], -1)), Image.fromarray(rgb)),
            (
                palette_image(self.INDICES, palette),
                palette_image(self.INDICES, palette).convert("RGB"),
            ),
        ]
        for one, other in pairs:
            assert as_images([one]).key(0) == as_images([other]).key(0), one.mode

    def test_size_is_part_of_the_key(self):
        row = Image.fromarray(np.zeros((1, 8, 3), np.uint8))
        column = Image.fromarray(np.zeros((8, 1, 3), np.uint8))
        assert as_images([row]).key(0) != as_images([column]).key(0)


class TestPILErrors:
    def test_lazily_opened_truncated_image_names_its_index(self, fitted, images, tmp_path):
        path = tmp_path / "cut.png"
        Image.fromarray(make_images(1, 64, 64, seed=8)[0]).save(path)
        path.write_bytes(path.read_bytes()[:300])
        with Image.open(path) as cut:  # opened, not decoded: PIL decodes on first use
            with pytest.raises(
                ValueError, match=r"Image 1 \(a PIL image of mode RGB\) cannot be decoded to RGB"
            ):
                fitted.transform([Image.fromarray(images[0]), cut])


class TestUnsafeFiles:
    def test_decompression_bomb(self, fitted, pngs, tmp_path, monkeypatch):
        path = tmp_path / "huge.png"
        Image.fromarray(make_images(1, 128, 128, seed=35)[0]).save(path)
        # 128 x 128 is over twice the limit (an error), the 48 x 40 pngs under it
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
        with pytest.raises(
            ValueError,
            match=rf"Image 1 \({re.escape(repr(str(path)))}\) is too large to decode safely: "
            r".*16384 pixels.* PIL\.Image\.MAX_IMAGE_PIXELS = <pixels> \(None disables",
        ):
            fitted.transform([pngs[0], path])

    def test_decompression_bomb_in_bytes(self, tmp_path, monkeypatch):
        buffer = io.BytesIO()
        Image.fromarray(make_images(1, 64, 64, seed=35)[0]).save(buffer, format="PNG")
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
        with pytest.raises(
            ValueError, match=r"Image 0 \(bytes, \d+ bytes\) is too large.*MAX_IMAGE_PIXELS"
        ):
            as_images([buffer.getvalue()]).load(0)

    @pytest.fixture
    def loop(self, tmp_path):
        a, b = tmp_path / "a.png", tmp_path / "b.png"
        os.symlink(a, b)
        os.symlink(b, a)
        return a

    def test_symlink_loop_in_a_list_of_paths(self, pngs, loop):
        with pytest.raises(
            ValueError,
            match=rf"Image 1 \({re.escape(repr(str(loop)))}\) is a symbolic link loop .*"
            r"Point the link at a real file or drop it",
        ):
            as_images([pngs[0], loop])

    def test_symlink_loop_when_opened(self, loop):
        # A link that turns into a loop after the existence check: the same message.
        with pytest.raises(ValueError, match=r"Image 0 .*a\.png.* is a symbolic link loop"):
            FileSource([loop]).load(0)


class Unseekable:
    """A stream that can be read once, like a socket or a pipe (no seek, no tell)."""

    def __init__(self, data):
        self._buffer = io.BytesIO(data)

    def read(self, *args):
        return self._buffer.read(*args)


class TestEncodedImages:
    @pytest.mark.parametrize(
        "wrap",
        [
            pytest.param(lambda d: d, id="bytes"),
            pytest.param(bytearray, id="bytearray"),
            pytest.param(io.BytesIO, id="BytesIO"),
            pytest.param(Unseekable, id="unseekable"),
        ],
    )
    @pytest.mark.parametrize("container", [list, tuple])
    def test_same_embedding_as_the_array(self, fitted, pngs, reference, wrap, container):
        X = container(wrap(p.read_bytes()) for p in pngs)
        np.testing.assert_array_equal(fitted.transform(X), reference)

    def test_open_file_objects(self, fitted, pngs, reference):
        files = [open(p, "rb") for p in pngs]
        try:
            np.testing.assert_array_equal(fitted.transform(files), reference)
        finally:
            for f in files:
                f.close()

    def test_file_object_is_read_from_and_put_back_where_it_stands(self, pngs):
        upload = io.BytesIO(b"header" + pngs[0].read_bytes())
        upload.seek(6)
        source = as_images([upload])
        source.key(0)
        decoded = np.asarray(source.load(0))
        assert upload.tell() == 6
        with Image.open(pngs[0]) as img:
            np.testing.assert_array_equal(decoded, np.asarray(img))

    def test_one_file_object_shared_by_worker_threads(self, pngs, tiny_checkpoint):
        upload = io.BytesIO(pngs[0].read_bytes())
        extractor = tiny_extractor(weights=tiny_checkpoint, batch_size=1, num_workers=2).fit()
        out = extractor.transform([upload] * 8)  # read, sought back, read again, in threads
        assert upload.tell() == 0
        for row in out[1:]:
            assert_same_embedding(row, out[0])

    def test_nothing_is_read_or_decoded_until_needed(self, pngs, monkeypatch):
        reads, opened = [], []
        upload = io.BytesIO(pngs[0].read_bytes())
        monkeypatch.setattr(upload, "read", lambda *a: reads.append(a) or b"")
        monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
        as_images([upload])
        as_images([pngs[0].read_bytes()])
        assert reads == [] and opened == []

    def test_keyed_by_content(self, pngs):
        data = pngs[0].read_bytes()
        keys = {
            as_images([data]).key(0),
            as_images([bytearray(data)]).key(0),
            as_images([io.BytesIO(data)]).key(0),
            as_images([Unseekable(data)]).key(0),
            hashlib.blake2b(data, digest_size=16).digest(),
        }
        assert len(keys) == 1
        assert as_images([pngs[1].read_bytes()]).key(0) not in keys

    def test_the_same_upload_twice_hits_the_cache(
        self, pngs, tiny_checkpoint, tmp_path, monkeypatch
    ):
        extractor = tiny_extractor(weights=tiny_checkpoint, memory=tmp_path).fit()
        first = extractor.transform([io.BytesIO(p.read_bytes()) for p in pngs[:2]])
        loads, original = [], EncodedSource.decoded  # what inference decodes with
        monkeypatch.setattr(
            EncodedSource, "decoded", lambda self, i: loads.append(i) or original(self, i)
        )
        again = extractor.transform([io.BytesIO(p.read_bytes()) for p in pngs[:3]])
        assert loads == [2]  # new file objects, same bytes: only the third is decoded
        np.testing.assert_array_equal(again[:2], first)

    def test_undecodable_bytes_name_the_index(self, fitted, pngs):
        X = [p.read_bytes() for p in pngs[:3]] + [b"x" * 120]
        with pytest.raises(
            ValueError, match=r"Image 3 \(bytes, 120 bytes\) is not an image file PIL can decode"
        ):
            fitted.transform(X)

    def test_undecodable_upload_names_its_name(self, tmp_path):
        path = tmp_path / "notes.png"
        path.write_bytes(b"not an image")
        with (
            open(path, "rb") as f,
            pytest.raises(
                ValueError,
                match=rf"Image 0 \(BufferedReader {re.escape(repr(str(path)))}, 12 bytes\) is not "
                "an image file",
            ),
        ):
            as_images([f]).load(0)

    def test_truncated_bytes(self, pngs):
        data = pngs[0].read_bytes()
        with pytest.raises(
            ValueError, match=r"Image 0 \(bytes, \d+ bytes\) is truncated or corrupt"
        ):
            as_images([data[: len(data) // 2]]).load(0)

    def test_already_read_upload_says_to_seek_back(self, pngs):
        upload = io.BytesIO(pngs[0].read_bytes())
        upload.read()
        with pytest.raises(ValueError, match=r"Image 0 \(BytesIO, 0 bytes\) is empty.*seek\(0\)"):
            as_images([upload]).load(0)

    def test_text_mode_file(self, tmp_path):
        path = tmp_path / "a.txt"
        path.write_text("text")
        with open(path) as f, pytest.raises(TypeError, match=r"Image 0 .*binary mode \('rb'\)"):
            as_images([f]).key(0)

    def test_asynchronous_upload(self):
        class AsyncUpload:
            async def read(self):
                return b""

        with pytest.raises(TypeError, match=r"Image 0 \(AsyncUpload\) has an asynchronous read"):
            as_images([AsyncUpload()]).key(0)

    def test_closed_file_object(self):
        upload = io.BytesIO(b"data")
        upload.close()
        with pytest.raises(
            ValueError,
            match=r"^Image 0 \(BytesIO\) cannot be read: I/O operation on closed file\.$",
        ):
            as_images([upload]).key(0)

    @pytest.mark.parametrize("single", [b"\x89PNG", bytearray(b"\x89PNG"), io.BytesIO(b"")])
    def test_single_encoded_image_not_in_a_list(self, single):
        with pytest.raises(TypeError, match=r"single .* Wrap it in a list: \[image\]"):
            as_images(single)

    def test_kinds_do_not_mix(self, pngs):
        with pytest.raises(
            TypeError, match="element 0 is encoded image bytes but element 1 is a file path"
        ):
            as_images([pngs[0].read_bytes(), pngs[0]])
        with pytest.raises(TypeError, match="element 0 is a file object but element 1 is encoded"):
            as_images([io.BytesIO(b""), b""])

    def test_numpy_array_of_bytes_is_refused(self, pngs):
        with pytest.raises(TypeError, match="dtype S.*Pass a list of bytes objects"):
            as_images(np.array([pngs[0].read_bytes()]))

    def test_object_array_and_series_of_bytes(self, pngs):
        data = [p.read_bytes() for p in pngs[:2]]
        for X in (np.array(data + [None], dtype=object)[:2], pd.Series(data)):
            source = as_images(X)
            assert source.key(1) == as_images([data[1]]).key(0)


def write_bmp(path, seed):
    """A BMP file: its size depends only on the image size, not on the pixels."""
    Image.fromarray(make_images(1, 16, 16, seed=seed)[0]).save(path, format="BMP")


class TestContentKeys:
    def test_files_rewritten_in_place(self, tmp_path):
        paths = [tmp_path / "a.bmp", tmp_path / "b.bmp"]
        for seed, path in enumerate(paths):
            write_bmp(path, seed)
        before = {key: [as_images(paths, key=key).key(i) for i in (0, 1)] for key in _KEYS}
        for seed, path in enumerate(paths):
            stat = path.stat()
            write_bmp(path, seed + 10)  # new pixels, same size
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            assert path.stat().st_size == stat.st_size
        after = {key: [as_images(paths, key=key).key(i) for i in (0, 1)] for key in _KEYS}
        assert after["stat"] == before["stat"]
        assert after["content"][0] != before["content"][0]
        assert after["content"][1] != before["content"][1]

    def test_content_key_is_the_hash_of_the_bytes(self, pngs):
        source = as_images(pngs, key="content")
        assert source.key(2) == hashlib.blake2b(pngs[2].read_bytes(), digest_size=16).digest()
        assert source.key(2) == as_images([pngs[2].read_bytes()]).key(0)
        assert source.key(2) != source.key(1)

    def test_default_is_stat(self, pngs):
        assert as_images(pngs).key(0) == as_images(pngs, key="stat").key(0)
        assert str(Path(pngs[0]).resolve()).encode() in as_images(pngs).key(0)

    def test_content_key_reads_no_file_until_asked(self, pngs, monkeypatch):
        hashed = []
        monkeypatch.setattr(FileSource, "_hash_file", lambda self, i: hashed.append(i))
        source = as_images(pngs, key="content")
        assert hashed == []
        source.key(1)
        assert hashed == [1]

    def test_other_sources_ignore_it(self, images):
        assert as_images(images, key="content").key(0) == as_images(images).key(0)

    def test_file_gone_before_hashing(self, tmp_path):
        path = tmp_path / "gone.bmp"
        write_bmp(path, 0)
        source = as_images([path], key="content")
        path.unlink()
        with pytest.raises(ValueError, match=r"Image 0 \('.*gone\.bmp'\) does not exist"):
            source.key(0)

    def test_unknown_key(self, pngs):
        with pytest.raises(ValueError, match=r"key must be 'stat' or 'content', got 'mtime'"):
            as_images(pngs, key="mtime")
