"""``sktransfer explain MODEL_FILE ROOT --out FOLDER``: one overlay PNG per image and an
``index.csv``, from a saved model, with the errors of the other sub-commands.

Runs ``main([...])`` in this process on tiny fine-tuned models saved with joblib;
outputs are compared with what ``sktransfer.inspection`` gives for the same files.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from _cli_fixtures import folder_with_bad_images, last_line, read_csv
from _finetune_fixtures import colour_images, tiny
from conftest import save_images, tiny_extractor
from PIL import Image
from sklearn.linear_model import LogisticRegression

from sktransfer import FineTunedRegressor
from sktransfer._cam import METHODS
from sktransfer._cli import CAM_METHODS, main
from sktransfer.inspection import class_activation_maps, overlay

pytest.importorskip("pytorch_grad_cam")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASS_NAMES = np.array(["green", "red"])
EXPLAIN_OPTIONS = [
    "--out",
    "--method",
    "--layer",
    "--target",
    "--alpha",
    "--extensions",
    "--batch-size",
    "--device",
    "--skip-bad-images",
    "--no-progress",
]
# the images under ROOT, sorted: three 32x32 in "a", two 40 high and 56 wide in "b/c"
NAMES = ["a/0.png", "a/1.png", "a/2.png", "b/c/0.png", "b/c/1.png"]
SIZES = [(32, 32)] * 3 + [(56, 40)] * 2  # (width, height), as PIL gives them


def fitted_classifier(labels):
    """A tiny FineTunedClassifier that tells the two colours apart, as ``labels``."""
    y = np.array([0, 1] * 8)
    return tiny(max_epochs=10, lr=0.01, verbose=False).fit(colour_images(y, seed=1), labels[y])


@pytest.fixture(scope="module")
def classifier():
    return fitted_classifier(CLASS_NAMES)


@pytest.fixture(scope="module")
def model_file(classifier, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.joblib"
    joblib.dump(classifier, path)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Images of both colours, in a sub-folder and a sub-sub-folder, of two sizes."""
    folder = tmp_path_factory.mktemp("images")
    save_images(colour_images(np.array([0, 1, 0])), folder / "a")
    save_images(colour_images(np.array([1, 0]), size=56, seed=2)[:, :40], folder / "b" / "c")
    return folder


@pytest.fixture(scope="module")
def paths(root):
    return [str(root / name) for name in NAMES]


@pytest.fixture(scope="module")
def explained(model_file, root, tmp_path_factory):
    """The default run: its output folder, and what it printed on stdout and stderr."""
    out = tmp_path_factory.mktemp("run") / "explained"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["explain", str(model_file), str(root), "--out", str(out)])
    assert status == 0
    return out, stdout.getvalue(), stderr.getvalue()


def files_under(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, relative, hidden ones included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def explain_args(model_file, root, out, *extra):
    return ["explain", str(model_file), str(root), "--out", str(out), "--no-progress", *extra]


def assert_pngs_are_overlays(out, classifier, paths, **overlay_params):
    """Each PNG under ``out`` is ``overlay`` (with ``overlay_params``) of its image and of
    the class activation map ``classifier`` gives for it."""
    maps = class_activation_maps(classifier, paths)
    for name, path, cam in zip(NAMES, paths, maps, strict=True):
        with Image.open(path) as image:
            expected = overlay(image, cam, **overlay_params).astype(int)
        png = np.asarray(Image.open(out / f"{name}.png"), dtype=int)
        assert np.abs(png - expected).max() <= 1  # float noise of another batch


# ---------------------------------------------------------------------- options


class TestOptions:
    def test_the_method_names_are_the_inspection_modules(self):
        assert tuple(METHODS) == CAM_METHODS

    def test_help_describes_every_option_with_an_example(self, capsys):
        with pytest.raises(SystemExit) as exit_:
            main(["explain", "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert [o for o in EXPLAIN_OPTIONS if o not in text] == []
        assert "sktransfer explain " in text.split("examples:")[1]
        assert "Exit status" in text
        assert "only load files you trust" in " ".join(text.split())

    def test_the_top_help_names_the_command(self, capsys):
        with pytest.raises(SystemExit):
            main(["--help"])
        text = capsys.readouterr().out
        assert "explain" in text and "sktransfer explain model.skops images/" in text

    @pytest.mark.parametrize("alpha", ["1.5", "-0.1", "half", "nan"])
    def test_alpha_is_between_0_and_1(self, alpha, capsys):
        with pytest.raises(SystemExit) as exit_:
            main(["explain", "m.pkl", "imgs", "--out", "cams", f"--alpha={alpha}"])
        assert exit_.value.code == 2
        assert last_line(capsys.readouterr().err) == (
            f"sktransfer explain: error: argument --alpha: expected a number from 0 to 1, "
            f"got '{alpha}'"
        )

    def test_a_mistyped_method_gets_the_closest_one(self, capsys):
        with pytest.raises(SystemExit) as exit_:
            main(["explain", "m.pkl", "imgs", "--out", "cams", "--method", "gradcm"])
        assert exit_.value.code == 2
        assert last_line(capsys.readouterr().err).replace('"', "'") == (
            "sktransfer explain: error: argument --method: invalid choice: 'gradcm' (choose "
            "from 'gradcam', 'gradcam++', 'layercam', 'scorecam', 'ablationcam', 'eigencam'); "
            "did you mean gradcam?"
        )

    def test_the_output_folder_is_required(self, capsys):
        with pytest.raises(SystemExit) as exit_:
            main(["explain", "m.pkl", "imgs"])
        assert exit_.value.code == 2
        assert "the following arguments are required: --out" in capsys.readouterr().err


# ---------------------------------------------------------------------- the output


class TestOutput:
    def test_one_png_per_image_at_its_size_in_its_sub_folder(self, explained):
        out, _, _ = explained
        overlays = [f"{name}.png" for name in NAMES]
        assert files_under(out) == sorted(["a", "b", "b/c", "index.csv", *overlays])
        for name, size in zip(overlays, SIZES, strict=True):
            with Image.open(out / name) as png:
                assert (png.format, png.mode, png.size) == ("PNG", "RGB", size)

    def test_the_pngs_are_the_overlays_of_the_maps(self, explained, classifier, paths):
        assert_pngs_are_overlays(explained[0], classifier, paths)

    def test_the_index_lists_the_predicted_class_and_its_probability(
        self, explained, classifier, paths
    ):
        out, _, _ = explained
        rows = read_csv(out / "index.csv")
        assert list(rows[0]) == ["path", "overlay", "target", "score"]
        assert [r["path"] for r in rows] == NAMES
        assert [r["overlay"] for r in rows] == [f"{name}.png" for name in NAMES]
        predicted = classifier.predict(paths)
        assert [r["target"] for r in rows] == predicted.tolist()
        assert set(predicted) == {"green", "red"}  # the check below is not vacuous
        proba = classifier.predict_proba(paths)
        expected = proba[np.arange(len(paths)), np.searchsorted(CLASS_NAMES, predicted)]
        np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-5)

    def test_the_summary_line_and_no_bar_in_a_log(self, explained):
        out, stdout, stderr = explained
        assert stdout.startswith(f"Explained 5 images (gradcam) into {out} in ")
        assert stdout.endswith(" s.\n")
        assert stderr == ""  # captured stderr is no terminal: nobody watches

    def test_target_explains_that_class_in_every_image(
        self, classifier, model_file, root, paths, tmp_path
    ):
        out = tmp_path / "red"
        assert main(explain_args(model_file, root, out, "--target", "red")) == 0
        rows = read_csv(out / "index.csv")
        assert [r["target"] for r in rows] == ["red"] * 5
        expected = classifier.predict_proba(paths)[:, 1]
        np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-5)

    def test_a_target_is_read_as_the_type_of_the_labels(self, root, paths, tmp_path):
        classifier = fitted_classifier(np.array([3, 7]))
        model_file, out = tmp_path / "ints.pkl", tmp_path / "seven"
        joblib.dump(classifier, model_file)
        assert main(explain_args(model_file, root, out, "--target", "7")) == 0
        rows = read_csv(out / "index.csv")
        assert [r["target"] for r in rows] == ["7"] * 5
        expected = classifier.predict_proba(paths)[:, 1]
        np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-5)

    def test_eigencam(self, explained, model_file, root, classifier, paths, tmp_path):
        out = tmp_path / "eigen"
        assert main(explain_args(model_file, root, out, "--method", "eigencam")) == 0
        rows = read_csv(out / "index.csv")
        assert [r["target"] for r in rows] == classifier.predict(paths).tolist()
        gradcam = np.asarray(Image.open(explained[0] / "a/0.png.png"))
        eigencam = np.asarray(Image.open(out / "a/0.png.png"))
        assert eigencam.shape == gradcam.shape and not np.array_equal(eigencam, gradcam)

    def test_alpha_and_batch_size(self, model_file, root, classifier, paths, tmp_path):
        out = tmp_path / "maps"
        extra = ["--alpha", "1", "--batch-size", "2"]  # chunks of 2 across the sub-folders
        assert main(explain_args(model_file, root, out, *extra)) == 0
        assert_pngs_are_overlays(out, classifier, paths, alpha=1.0)

    def test_a_regressor_explains_its_predicted_value(self, root, paths, tmp_path):
        X = colour_images(np.arange(8) % 2)
        regressor = tiny(FineTunedRegressor, verbose=False).fit(X, np.arange(8.0))
        model_file, out = tmp_path / "regressor.joblib", tmp_path / "out"
        joblib.dump(regressor, model_file)
        assert main(explain_args(model_file, root, out)) == 0
        rows = read_csv(out / "index.csv")
        assert [r["target"] for r in rows] == ["0"] * 5  # its one output
        scores = [float(r["score"]) for r in rows]
        np.testing.assert_allclose(scores, regressor.predict(paths), rtol=1e-5)

    def test_an_imagenet_classifier_explains_a_class_index(self, root, tmp_path):
        model_file, out = tmp_path / "logits.pkl", tmp_path / "out"
        joblib.dump(tiny_extractor(layer="logits").fit(), model_file)
        assert main(explain_args(model_file, root, out, "--target", "3")) == 0
        assert [r["target"] for r in read_csv(out / "index.csv")] == ["3"] * 5

    def test_an_earlier_output_is_replaced(self, model_file, root, tmp_path):
        out = tmp_path / "out"
        (out / "a").mkdir(parents=True)
        (out / "a" / "0.png.png").write_bytes(b"an earlier overlay")
        (out / "index.csv").write_text("an earlier index")
        (out / "skipped.csv").write_text("an earlier list")
        assert main(explain_args(model_file, root, out)) == 0
        assert [r["path"] for r in read_csv(out / "index.csv")] == NAMES
        assert Image.open(out / "a" / "0.png.png").size == (32, 32)
        assert not (out / "skipped.csv").exists()  # it described another run


# ---------------------------------------------------------------------- bad images


class TestBadImages:
    def test_a_broken_image_stops_the_run_and_leaves_the_old_output(
        self, model_file, tmp_path, capsys
    ):
        folder, _ = folder_with_bad_images(tmp_path / "images")
        out = tmp_path / "out"
        out.mkdir()
        (out / "index.csv").write_text("the previous index")
        (out / "0.png.png").write_bytes(b"the previous overlay")
        assert main(explain_args(model_file, folder, out, "--batch-size", "4")) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sktransfer: error: Image 1 ('{folder / '1.png'}') is truncated")
        assert len(err.splitlines()) == 1
        assert (out / "index.csv").read_text() == "the previous index"
        assert (out / "0.png.png").read_bytes() == b"the previous overlay"
        assert files_under(out) == ["0.png.png", "index.csv"]  # no temporary file left

    def test_a_failed_run_removes_the_folder_it_made(self, model_file, tmp_path, capsys):
        folder, _ = folder_with_bad_images(tmp_path / "images")
        assert main(explain_args(model_file, folder, tmp_path / "new")) == 2
        assert "Image 1" in capsys.readouterr().err
        assert sorted(os.listdir(tmp_path)) == ["images"]

    def test_skip_bad_images_leaves_them_out_and_lists_them(
        self, model_file, classifier, tmp_path, capsys
    ):
        folder, _ = folder_with_bad_images(tmp_path / "images")
        out = tmp_path / "out"
        extra = ["--skip-bad-images", "--batch-size", "4"]  # one bad image in each chunk
        assert main(explain_args(model_file, folder, out, *extra)) == 0
        summary = capsys.readouterr().out
        assert summary.startswith(f"Explained 4 images (gradcam) into {out} in ")
        assert summary.endswith(
            f" s; skipped 2 unreadable images (listed in {out / 'skipped.csv'}).\n"
        )
        rows = read_csv(out / "index.csv")
        good = ["0.png", "2.png", "3.png", "5.png"]
        assert [r["path"] for r in rows] == good
        expected = classifier.predict([str(folder / name) for name in good])
        assert [r["target"] for r in rows] == expected.tolist()
        assert files_under(out) == sorted(
            ["index.csv", "skipped.csv", *(f"{name}.png" for name in good)]
        )
        skipped = read_csv(out / "skipped.csv")
        assert [r["path"] for r in skipped] == ["1.png", "4.png"]
        assert skipped[1]["error"] == (
            f"Image 4 ('{folder / '4.png'}') is not an image file PIL can decode."
        )


# ---------------------------------------------------------------------- errors


def saved(model, folder: Path, name: str) -> Path:
    path = folder / name
    joblib.dump(model, path)
    return path


class TestErrors:
    def test_an_unknown_label_lists_the_known_ones(self, model_file, root, tmp_path, capsys):
        out = tmp_path / "out"
        assert main(explain_args(model_file, root, out, "--target", "blue")) == 2
        assert capsys.readouterr().err == (
            "sktransfer: error: target='blue' is not a class label of this model; it knows "
            "'green', 'red'. Pass one of them, or leave the target out to explain the "
            f"predicted one. Model: {model_file}.\n"
        )
        assert sorted(os.listdir(tmp_path)) == []

    def test_an_unknown_imagenet_class_lists_the_first_ones(self, root, tmp_path, capsys):
        model_file = saved(tiny_extractor(layer="logits").fit(), tmp_path, "logits.pkl")
        assert main(explain_args(model_file, root, tmp_path / "out", "--target", "1000")) == 2
        first = ", ".join(str(j) for j in range(20))
        assert f"it knows {first}, ... (1000 in all). Pass" in capsys.readouterr().err

    def test_an_unknown_layer_names_the_candidates(self, model_file, root, tmp_path, capsys):
        out = tmp_path / "out"
        assert main(explain_args(model_file, root, out, "--layer", "blocks.9")) == 2
        err = capsys.readouterr().err
        assert err.startswith("sktransfer: error: layer='blocks.9' is not a layer of this ")
        assert "Layers with a spatial output include: " in err and len(err.splitlines()) == 1
        assert sorted(os.listdir(tmp_path)) == []

    @pytest.mark.parametrize(
        "kind, message",
        [
            ("features", "This PretrainedFeatureExtractor has layer=None"),
            ("plain", "Class activation maps explain a fitted FineTunedClassifier"),
        ],
    )
    def test_a_model_that_cannot_be_explained(self, kind, message, root, tmp_path, capsys):
        if kind == "features":
            model = tiny_extractor().fit()
        else:
            model = LogisticRegression().fit(np.eye(4), [0, 1, 0, 1])
        model_file = saved(model, tmp_path, f"{kind}.joblib")
        assert main(explain_args(model_file, root, tmp_path / "out")) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"sktransfer: error: Cannot explain the model in {model_file}: {message}"
        )
        assert len(err.splitlines()) == 1
        assert sorted(os.listdir(tmp_path)) == [model_file.name]

    def test_several_label_columns_point_to_python(self, root, tmp_path, capsys):
        y = np.arange(12) % 3
        frame = pd.DataFrame({"colour": y, "warmth": np.array(["warm", "cold", "cold"])[y]})
        model = tiny(max_epochs=1, verbose=False).fit(colour_images(y), frame)
        model_file = saved(model, tmp_path, "multitask.joblib")
        assert main(explain_args(model_file, root, tmp_path / "out")) == 2
        assert capsys.readouterr().err == (
            f"sktransfer: error: The model in {model_file} predicts 2 label columns, and "
            "`sktransfer explain` explains one class: in Python, pass target=(task, label) "
            "to sktransfer.inspection.class_activation_maps.\n"
        )

    def test_several_outputs_of_a_regressor_need_a_target(self, root, tmp_path, capsys):
        X = colour_images(np.arange(8) % 2)
        y = np.c_[np.arange(8.0), -np.arange(8.0)]
        model_file = saved(tiny(FineTunedRegressor, verbose=False).fit(X, y), tmp_path, "r.pkl")
        assert main(explain_args(model_file, root, tmp_path / "out")) == 2
        assert capsys.readouterr().err == (
            "sktransfer: error: This regressor has 2 outputs: pass the index of the one to "
            f"explain as the target (0 to 1). Model: {model_file}.\n"
        )
        assert main(explain_args(model_file, root, tmp_path / "out", "--target", "1")) == 0

    def test_without_grad_cam_it_says_what_to_install(self, root, tmp_path, monkeypatch, capsys):
        monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # as if not installed
        model_file = tmp_path / "model.pkl"
        model_file.write_bytes(b"never loaded: the missing package shows first")
        assert main(explain_args(model_file, root, tmp_path / "out")) == 1
        assert capsys.readouterr().err == (
            "sktransfer: error: Class activation maps need pytorch-grad-cam: pip install "
            "sktransfer[inspection] (or pip install grad-cam).\n"
        )

    def test_the_output_folder_inside_root_is_refused(self, model_file, root, capsys):
        out = root / "b" / "cams"
        assert main(explain_args(model_file, root, out)) == 2
        assert capsys.readouterr().err == (
            f"sktransfer: error: --out {str(out)!r} lies inside ROOT ({root}), so a later run "
            "would list the overlays as images. Write them to a folder outside ROOT.\n"
        )
        assert not out.exists()

    def test_an_output_that_is_a_file_is_refused(self, model_file, root, tmp_path, capsys):
        out = tmp_path / "cams.csv"
        out.write_text("a file")
        assert main(explain_args(model_file, root, out)) == 2
        assert capsys.readouterr().err == (
            f"sktransfer: error: --out {str(out)!r} is a file: pass a folder (it is created "
            "if missing).\n"
        )

    def test_a_missing_parent_folder_is_refused(self, model_file, root, tmp_path, capsys):
        out = tmp_path / "missing" / "cams"
        assert main(explain_args(model_file, root, out)) == 2
        err = capsys.readouterr().err
        assert f"the folder {out.parent} does not exist" in err and "mkdir -p" in err
