"""The ``sktransfer`` command line: ``embed`` and ``predict`` on a folder of images.

Runs ``main([...])`` in this process (the console script and ``python -m sktransfer``
are each started once), on tiny models; outputs are compared with what the estimators
give for ``load_image_folder(ROOT, labelled=False).paths``.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from _cli_fixtures import folder_with_bad_images, last_line, read_csv
from _finetune_fixtures import colour_images, tiny
from conftest import (
    TINY_MODEL,
    TINY_SIZE,
    assert_same_embedding,
    save_checkpoint,
    save_images,
    tiny_extractor,
)
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor, UnreadableImageError, top_imagenet_labels
from sktransfer._backbone import imagenet_label_names
from sktransfer._cli import build_parser, main
from sktransfer._commands import _extractor_params, _override
from sktransfer.datasets import IMAGE_EXTENSIONS, load_image_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASS_NAMES = np.array(["green", "red"])
LABELS = np.array([0, 1] * 6 + [1, 0])  # 14 images: 12 in "flat", 2 in "nested/deeper"
CHUNK = 4  # = the batch size below: the CLI runs exactly the batches of one transform

EMBED_OPTIONS = [
    "--model",
    "--out",
    "--weights",
    "--layer",
    "--top-k",
    "--pooling",
    "--image-size",
    "--batch-size",
    "--device",
    "--cache",
    "--extensions",
    "--dask-scheduler",
    "--dask-timeout",
    "--skip-bad-images",
    "--chunk-size",
    "--no-progress",
]
PREDICT_OPTIONS = [
    "--out",
    "--extensions",
    "--batch-size",
    "--device",
    "--dask-scheduler",
    "--dask-timeout",
    "--skip-bad-images",
    "--chunk-size",
    "--no-progress",
]


class Marker:
    """A type that skops does not trust and that is not sktransfer's."""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A folder of colour images: ``flat/0.png`` ... ``flat/11.png`` (so that "10.png"
    sorts before "2.png") and ``nested/deeper/{0,1}.png``."""
    folder = tmp_path_factory.mktemp("images")
    images = colour_images(LABELS)
    save_images(images[:12], folder / "flat")
    save_images(images[12:], folder / "nested" / "deeper")
    return folder


@pytest.fixture(scope="module")
def paths(root):
    return load_image_folder(root, labelled=False).paths


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, paths):
    """What the extractor that ``embed_args`` describes gives for the folder."""
    extractor = tiny_extractor(weights=str(tiny_checkpoint), batch_size=CHUNK).fit()
    return extractor, extractor.transform(list(paths))


@pytest.fixture(scope="module")
def classifier():
    y = np.array([0, 1] * 8)
    return tiny(max_epochs=2).fit(colour_images(y, seed=1), CLASS_NAMES[y])


@pytest.fixture(scope="module")
def two_label_columns():
    """Images and a DataFrame of two label columns: colour (3 classes), warmth (2)."""
    colour = np.arange(18) % 3
    warmth = np.array(["warm", "cold", "cold"])[colour]
    return colour_images(colour), pd.DataFrame({"colour": colour, "warmth": warmth})


def embed_args(root, out, checkpoint, *extra):
    return [
        "embed",
        str(root),
        "--model",
        TINY_MODEL,
        "--weights",
        str(checkpoint),
        "--image-size",
        str(TINY_SIZE),
        "--batch-size",
        str(CHUNK),
        "--chunk-size",
        str(CHUNK),
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def relative(paths, root) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


# ---------------------------------------------------------------------- options


class TestOptions:
    def test_values_map_onto_the_extractor_parameters(self):
        args = build_parser().parse_args(
            ["embed", "r", "--out", "e.npy", "--layer=1,2,-1", "--image-size", "40x32"]
        )
        assert (args.layer, args.image_size) == ([1, 2, -1], (40, 32))
        args = build_parser().parse_args(
            ["embed", "r", "--out", "e.npy", "--layer", "-1", "--weights", "none"]
        )
        assert (args.layer, args.weights) == (-1, None)
        args = build_parser().parse_args(["embed", "r", "--out", "e.npy", "--layer", "logits"])
        assert args.layer == "logits"

    def test_defaults_are_the_extractor_defaults(self):
        args = build_parser().parse_args(["embed", "r", "--out", "e.npy"])
        defaults = PretrainedFeatureExtractor().get_params()
        got = _extractor_params(args)
        assert got.pop("verbose") is False  # the command line's own bar counts the job
        assert len(got) == 9
        assert got == {name: defaults[name] for name in got}
        assert (args.chunk_size, args.dask_timeout, args.no_progress) == (256, 10.0, False)
        assert args.extensions == IMAGE_EXTENSIONS

    @pytest.mark.parametrize("command", [["embed"], ["predict", "model.pkl"]], ids=str)
    def test_extensions_are_comma_separated_endings(self, command):
        options = ["r", "--out", "o.csv", "--extensions", ".tif, .BMP"]
        assert build_parser().parse_args([*command, *options]).extensions == (".tif", ".BMP")

    @pytest.mark.parametrize(
        "option, value, message",
        [
            ("--layer", "1,x", "expected 'logits', a block index"),
            ("--image-size", "0", "expected a size in pixels"),
            ("--image-size", "32x32x3", "expected a size in pixels"),
            ("--batch-size", "0", "expected an integer >= 1"),
            ("--chunk-size", "2.5", "expected an integer >= 1"),
            ("--dask-timeout", "-1", "expected a number of seconds > 0"),
            ("--pooling", "mean", "invalid choice"),
            ("--extensions", "tif,.bmp", "expected file name endings with their dot"),
            ("--extensions", ".tif,", "expected file name endings with their dot"),
        ],
    )
    def test_invalid_values_exit_2_with_a_message(self, option, value, message, capsys):
        with pytest.raises(SystemExit) as exit_:
            main(["embed", "r", "--out", "e.npy", f"{option}={value}"])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err

    @pytest.mark.parametrize(
        "command, options", [("embed", EMBED_OPTIONS), ("predict", PREDICT_OPTIONS)]
    )
    def test_help_describes_every_option_with_an_example(self, command, options, capsys):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert [o for o in options if o not in text] == []
        assert f"sktransfer {command} " in text.split("examples:")[1]
        assert "Exit status" in text

    def test_help_gives_the_extractor_defaults(self, capsys):
        with pytest.raises(SystemExit):
            main(["embed", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: efficientnet_b0.ra_in1k)" in text
        assert "images per forward pass (default: 32)" in text
        assert "(default: pretrained)" in text

    def test_predict_help_warns_that_pickles_run_code(self, capsys):
        with pytest.raises(SystemExit):
            main(["predict", "--help"])
        assert "only load files you trust" in " ".join(capsys.readouterr().out.split())

    def test_predict_help_names_the_columns_of_several_outputs(self, capsys):
        with pytest.raises(SystemExit):
            main(["predict", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "named after the label columns when the model was fitted on a DataFrame y" in text
        assert "else prediction_0, prediction_1, ..." in text

    def test_out_help_says_where_the_paths_go(self, capsys):
        with pytest.raises(SystemExit):
            main(["embed", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "go one a line into FILE.paths.txt beside it) or FILE.parquet (the paths" in text


class TestTypos:
    @pytest.mark.parametrize(
        "argv, error",
        [
            (
                ["embed", "imgs", "--modle", "x", "--out", "a.npy"],
                "sktransfer embed: error: unrecognized arguments: --modle x; did you mean --model?",
            ),
            (
                ["predict", "m.pkl", "imgs", "--out", "p.csv", "--batch-sise=3", "--devise", "cpu"],
                "sktransfer predict: error: unrecognized arguments: --batch-sise=3 --devise cpu; "
                "did you mean --batch-size, --device?",
            ),
            (
                ["embed", "imgs", "--out", "a.npy", "--pooling", "avgmx"],
                "sktransfer embed: error: argument --pooling: invalid choice: 'avgmx' (choose "
                "from 'avg', 'max', 'avgmax', 'token'); did you mean avgmax?",
            ),
            (
                ["embed", "imgs", "--out", "a.npy", "--zzz"],
                "sktransfer embed: error: unrecognized arguments: --zzz",
            ),
        ],
        ids=["option", "two options", "choice", "nothing close"],
    )
    def test_the_closest_option_is_suggested(self, argv, error, capsys):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"usage: sktransfer {argv[0]} ")
        assert last_line(err).replace('"', "'") == error  # 3.12 on: no quotes in choices

    def test_the_closest_command_is_suggested(self, capsys):
        with pytest.raises(SystemExit) as exit_:
            main(["embedd", "imgs", "--out", "a.npy"])
        assert exit_.value.code == 2
        err = last_line(capsys.readouterr().err)
        assert err.startswith("sktransfer: error: argument COMMAND: invalid choice: 'embedd'")
        assert err.endswith("; did you mean embed?")


class TestCombinations:
    @pytest.mark.parametrize(
        "layer, got",
        [([], "no --layer (the pre-logits features)"), (["--layer=-1,2"], "--layer=-1,2")],
    )
    def test_top_k_needs_the_logits(self, layer, got, capsys):
        with pytest.raises(SystemExit) as exit_:
            main(["embed", "imgs", "--out", "top.csv", "--top-k", "5", *layer])
        assert exit_.value.code == 2
        assert last_line(capsys.readouterr().err) == (
            f"sktransfer embed: error: --top-k needs --layer logits (the class scores it "
            f"ranks), got {got}. Add --layer logits, or leave out --top-k."
        )

    @pytest.mark.parametrize("k", ["0", "1001", "five"])
    def test_top_k_is_between_1_and_1000(self, k, capsys):
        with pytest.raises(SystemExit) as exit_:
            main(["embed", "imgs", "--out", "top.csv", "--layer", "logits", "--top-k", k])
        assert exit_.value.code == 2
        assert last_line(capsys.readouterr().err) == (
            "sktransfer embed: error: argument --top-k: expected an integer between 1 and "
            f"1000 (ImageNet-1k's classes), got '{k}'"
        )

    @pytest.mark.parametrize("command", [["embed"], ["predict", "model.pkl"]], ids=str)
    def test_skip_bad_images_is_refused_on_dask(self, command, capsys):
        options = ["imgs", "--out", "o.csv", "--skip-bad-images", "--dask-scheduler", "tcp://h:1"]
        with pytest.raises(SystemExit) as exit_:
            main([*command, *options])
        assert exit_.value.code == 2
        assert last_line(capsys.readouterr().err) == (
            f"sktransfer {command[0]}: error: --skip-bad-images runs in this process only, "
            "not with --dask-scheduler: leave out --dask-scheduler to skip unreadable images, "
            "or remove them from ROOT to run on the cluster."
        )


def test_console_script_help():
    script = Path(sys.executable).parent / "sktransfer"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "embed" in done.stdout and "predict" in done.stdout


def test_python_dash_m_help():
    done = subprocess.run(
        [sys.executable, "-m", "sktransfer", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: sktransfer")


# ---------------------------------------------------------------------- embed


class TestEmbed:
    def test_npy_holds_the_embeddings_in_sorted_file_order(
        self, root, paths, reference, tiny_checkpoint, tmp_path, capsys
    ):
        out = tmp_path / "embeddings.npy"
        assert main(embed_args(root, out, tiny_checkpoint)) == 0
        rows = np.load(out)
        assert rows.dtype == np.float32
        np.testing.assert_array_equal(rows, reference[1])
        assert relative(paths, root)[:4] == [
            "flat/0.png",
            "flat/1.png",
            "flat/10.png",
            "flat/11.png",
        ]
        summary = capsys.readouterr().out
        assert summary.startswith(f"Embedded 14 images (256 features each) into {out} in ")
        paths_file = tmp_path / "embeddings.paths.txt"
        assert paths_file.read_text(encoding="utf-8") == "".join(
            f"{p}\n" for p in relative(paths, root)
        )
        assert sorted(os.listdir(tmp_path)) == ["embeddings.npy", "embeddings.paths.txt"]

    def test_parquet_has_relative_paths_then_one_column_per_feature(
        self, root, paths, reference, tiny_checkpoint, tmp_path
    ):
        pq = pytest.importorskip("pyarrow.parquet")
        out = tmp_path / "embeddings.parquet"
        assert main(embed_args(root, out, tiny_checkpoint)) == 0
        file = pq.ParquetFile(out)
        table = file.read()
        names = list(reference[0].get_feature_names_out())
        assert table.column_names == ["path", *names]
        assert table.column("path").to_pylist() == relative(paths, root)
        assert table.schema.field(names[0]).type == "float"
        rows = np.column_stack([table.column(n).to_numpy() for n in names])
        np.testing.assert_array_equal(rows, reference[1])
        assert file.metadata.num_row_groups == -(-len(paths) // CHUNK)  # one per chunk

    def test_no_progress_bar_in_a_log(self, root, tiny_checkpoint, tmp_path, capsys):
        # captured stderr is no terminal: nobody watches (tests/test_first_hour.py runs
        # the command line in a terminal, where the bar shows)
        args = embed_args(root, tmp_path / "e.npy", tiny_checkpoint)
        assert main([a for a in args if a != "--no-progress"]) == 0
        assert capsys.readouterr().err == ""

    def test_weights_path_and_none(self, root, paths, reference, tiny_checkpoint, tmp_path):
        weights = tmp_path / "seed1.pth"
        save_checkpoint(weights, TINY_MODEL, seed=1)
        from_file, random = tmp_path / "from_file.npy", tmp_path / "random.npy"
        assert main(embed_args(root, from_file, weights)) == 0
        assert main(embed_args(root, random, tiny_checkpoint, "--weights", "none")) == 0
        expected = tiny_extractor(weights=weights, batch_size=CHUNK).fit().transform(list(paths))
        np.testing.assert_array_equal(np.load(from_file), expected)
        # random initialisation is seeded with 0, as the checkpoint of the reference
        np.testing.assert_array_equal(np.load(random), reference[1])
        assert not np.allclose(expected, reference[1])

    @pytest.mark.parametrize(
        "stated", ["inception", '{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}']
    )
    def test_preprocessing_preset_or_json(self, stated, root, paths, tiny_checkpoint, tmp_path):
        out = tmp_path / "stated.npy"
        assert main(embed_args(root, out, tiny_checkpoint, "--preprocessing", stated)) == 0
        extractor = tiny_extractor(
            weights=tiny_checkpoint, batch_size=CHUNK, preprocessing="inception"
        )
        np.testing.assert_array_equal(np.load(out), extractor.fit().transform(list(paths)))

    @pytest.mark.parametrize("bad", ["tf", "[0.5]", '{"mean": 0.5'])
    def test_preprocessing_that_is_no_preset_or_object(self, bad, root, tmp_path, capsys):
        with pytest.raises(SystemExit) as exit_:
            main(["embed", str(root), "--out", str(tmp_path / "e.npy"), "--preprocessing", bad])
        assert exit_.value.code == 2
        assert "expected one of ['clip', 'imagenet', 'inception'] or a JSON object" in (
            capsys.readouterr().err
        )

    def test_layer_list_concatenates_blocks(self, root, tiny_checkpoint, tmp_path):
        out = tmp_path / "blocks.npy"
        assert main(embed_args(root, out, tiny_checkpoint, "--layer", "1,2")) == 0
        width = tiny_extractor(layer=[1, 2]).fit().n_features_out_
        assert np.load(out).shape == (14, width)
        assert width != 256

    def test_extensions_flag_lists_other_kinds_of_files(self, tiny_checkpoint, tmp_path):
        folder = tmp_path / "scans"
        save_images(colour_images(LABELS[:2]), folder)  # 0.png and 1.png: not listed
        for i, image in enumerate(colour_images(LABELS[2:5], seed=3)):
            Image.fromarray(image).save(folder / f"{i}.TIF")
        out = tmp_path / "scans.npy"
        assert main(embed_args(folder, out, tiny_checkpoint, "--extensions", ".tif,.bmp")) == 0
        tifs = [folder / f"{i}.TIF" for i in range(3)]
        expected = tiny_extractor(weights=tiny_checkpoint, batch_size=CHUNK).fit().transform(tifs)
        np.testing.assert_array_equal(np.load(out), expected)

    def test_cache_is_filled_then_read(
        self, root, reference, tiny_checkpoint, tmp_path, embed_calls
    ):
        cache = tmp_path / "cache"
        for run in ("first", "second"):
            out = tmp_path / f"{run}.npy"
            assert main(embed_args(root, out, tiny_checkpoint, "--cache", str(cache))) == 0
            np.testing.assert_array_equal(np.load(out), reference[1])
            if run == "first":
                assert sum(embed_calls) == 14
                assert any((cache / "sktransfer" / "embeddings").rglob("*.*"))
                embed_calls.clear()
        assert sum(embed_calls) == 0


# ---------------------------------------------------------------------- predict


class TestPredict:
    @pytest.mark.parametrize("suffix", [".joblib", ".pkl", ".skops"])
    def test_csv_holds_predict_and_predict_proba(
        self, suffix, classifier, root, paths, tmp_path, capsys
    ):
        model_file, out = tmp_path / f"model{suffix}", tmp_path / "predictions.csv"
        if suffix == ".skops":
            pytest.importorskip("skops.io").dump(classifier, model_file)
        else:
            joblib.dump(classifier, model_file)
        args = ["predict", str(model_file), str(root), "--out", str(out), "--no-progress"]
        assert main(args) == 0
        rows = read_csv(out)
        assert list(rows[0]) == ["path", "prediction", "proba_green", "proba_red"]
        assert [r["path"] for r in rows] == relative(paths, root)
        assert [r["prediction"] for r in rows] == classifier.predict(list(paths)).tolist()
        proba = np.array([[r["proba_green"], r["proba_red"]] for r in rows], dtype=float)
        expected = classifier.predict_proba(list(paths))
        np.testing.assert_array_equal(proba.astype(expected.dtype), expected)
        assert capsys.readouterr().out.startswith(f"Predicted 14 images into {out} in ")

    def test_skops_file_naming_other_types_is_refused_unloaded(
        self, classifier, root, tmp_path, monkeypatch, capsys
    ):
        sio = pytest.importorskip("skops.io")
        model_file = tmp_path / "model.skops"
        sio.dump([classifier, Marker()], model_file)

        def load(*args, **kwargs):
            raise AssertionError("the file was loaded")

        monkeypatch.setattr(sio, "load", load)
        out = tmp_path / "predictions.csv"
        assert main(["predict", str(model_file), str(root), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sktransfer: error: The skops file")
        assert "test_cli.Marker" in err and "skops.io.load(path, trusted=" in err
        assert "FineTunedClassifier" not in err  # sktransfer's own types are trusted
        assert not out.exists()

    def test_a_model_without_predict_points_to_embed(self, reference, root, tmp_path, capsys):
        model_file = tmp_path / "extractor.pkl"
        joblib.dump(reference[0], model_file)
        args = ["predict", str(model_file), str(root), "--out", str(tmp_path / "p.csv")]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "no predict method" in err and "sktransfer embed" in err

    @pytest.mark.parametrize(
        "model, suffix",
        [
            (LogisticRegression(), ".joblib"),
            (make_pipeline(StandardScaler(), LogisticRegression()), ".skops"),
        ],
        ids=["LogisticRegression", "Pipeline"],
    )
    def test_a_model_that_reads_no_images_is_refused(self, model, suffix, root, tmp_path, capsys):
        model.fit(np.random.default_rng(0).normal(size=(10, 3)), [0, 1] * 5)
        model_file = tmp_path / f"plain{suffix}"
        if suffix == ".skops":
            pytest.importorskip("skops.io").dump(model, model_file)
        else:
            joblib.dump(model, model_file)
        out = tmp_path / "p.csv"
        assert main(["predict", str(model_file), str(root), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"sktransfer: error: The model in {model_file} is a {type(model).__name__}, "
            "which does not read images: `sktransfer predict` expects a fitted sktransfer "
            "estimator (FineTunedClassifier, FineTunedRegressor) or a Pipeline whose first "
            "step is one"
        )
        assert "Traceback" not in err and not out.exists()

    @pytest.mark.parametrize("search", [False, True], ids=["Pipeline", "GridSearchCV"])
    def test_a_probe_pipeline_or_a_search_over_one_predicts(
        self, search, tiny_checkpoint, root, paths, tmp_path
    ):
        pipe = make_pipeline(tiny_extractor(weights=tiny_checkpoint), LogisticRegression())
        if search:
            pipe = GridSearchCV(pipe, {"logisticregression__C": [1.0]}, cv=2)
        pipe.fit(list(paths), CLASS_NAMES[np.arange(len(paths)) % 2])
        model_file, out = tmp_path / "probe.joblib", tmp_path / "p.csv"
        joblib.dump(pipe, model_file)
        assert main(["predict", str(model_file), str(root), "--out", str(out)]) == 0
        rows = read_csv(out)
        assert list(rows[0]) == ["path", "prediction", "proba_green", "proba_red"]
        assert [r["prediction"] for r in rows] == pipe.predict(list(paths)).tolist()

    def test_several_label_columns_of_an_array_y(self, two_label_columns, root, paths, tmp_path):
        X, frame = two_label_columns
        classifier = tiny(max_epochs=1).fit(X, frame.to_numpy().astype(str))
        model_file, out = tmp_path / "multitask.joblib", tmp_path / "p.csv"
        joblib.dump(classifier, model_file)
        assert main(["predict", str(model_file), str(root), "--out", str(out)]) == 0
        rows = read_csv(out)
        assert list(rows[0]) == ["path", "prediction_0", "prediction_1"]
        expected = classifier.predict(list(paths))
        assert [[r["prediction_0"], r["prediction_1"]] for r in rows] == expected.tolist()

    def test_several_label_columns_named_after_a_dataframe_y(
        self, two_label_columns, root, paths, tmp_path
    ):
        X, frame = two_label_columns
        classifier = tiny(max_epochs=1).fit(X, frame)
        model_file, out = tmp_path / "multitask.joblib", tmp_path / "p.csv"
        joblib.dump(classifier, model_file)
        assert main(["predict", str(model_file), str(root), "--out", str(out)]) == 0
        rows = read_csv(out)
        assert list(rows[0]) == ["path", "colour", "warmth"]
        expected = classifier.predict(list(paths)).astype(str)
        assert [[r["colour"], r["warmth"]] for r in rows] == expected.tolist()

    def test_unknown_model_suffix(self, root, tmp_path, capsys):
        model_file = tmp_path / "model.bin"
        model_file.write_bytes(b"not a model")
        args = ["predict", str(model_file), str(root), "--out", str(tmp_path / "p.csv")]
        assert main(args) == 2
        assert ".skops, .pkl, .pickle, .joblib" in capsys.readouterr().err

    @pytest.mark.parametrize("suffix", [".pkl", ".skops"])
    def test_a_file_that_is_no_model(self, suffix, root, tmp_path, capsys):
        model_file = tmp_path / f"model{suffix}"
        model_file.write_bytes(b"garbage")
        args = ["predict", str(model_file), str(root), "--out", str(tmp_path / "p.csv")]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sktransfer: error: Cannot load the model file {model_file} (")
        assert "Expected a fitted model saved with skops.io.dump" in err

    def test_batch_size_and_device_override_the_pipeline_steps(
        self, reference, classifier, tmp_path
    ):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        extractor = pickle.loads(pickle.dumps(reference[0]))  # leaves the fixture as it is
        pipe = make_pipeline(extractor, LogisticRegression())
        _override(pipe, 3, "cpu")
        assert (pipe[0].batch_size, pipe[0].device, str(pipe[0].device_)) == (3, "cpu", "cpu")
        with pytest.raises(ValueError, match="not available on this machine"):
            _override(joblib.load(joblib.dump(classifier, tmp_path / "m.pkl")[0]), None, "cuda:99")

    def test_a_searchs_best_estimator_is_overridden_too(self, tiny_checkpoint):
        y = np.arange(8) % 2
        X = colour_images(y, size=TINY_SIZE)
        pipe = make_pipeline(tiny_extractor(weights=str(tiny_checkpoint)), LogisticRegression())
        search = GridSearchCV(pipe, {"logisticregression__C": [1.0]}, cv=2).fit(X, y)
        _override(search, 3, "cpu")
        best = search.best_estimator_[0]  # what predicts: not the search's template
        assert (best.batch_size, best.device, str(best.device_)) == (3, "cpu", "cpu")
        assert best.verbose is False


# ---------------------------------------------------------------------- errors


class TestErrors:
    def test_unknown_output_format_exits_before_the_model_loads(self, root, tmp_path, capsys):
        args = ["embed", str(root), "--model", "no_such_model", "--out", str(tmp_path / "e.txt")]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("sktransfer: error: --out")
        assert "the supported formats are .npy, .parquet" in err
        assert "no_such_model" not in err  # the model was never looked up

    def test_missing_output_folder_exits_before_the_model_loads(self, root, tmp_path, capsys):
        out = tmp_path / "missing" / "e.npy"
        assert main(["embed", str(root), "--model", "no_such_model", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"the folder {out.parent} does not exist" in err and "mkdir -p" in err

    def test_missing_root(self, tmp_path, capsys):
        args = ["embed", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e.npy")]
        assert main(args) == 2
        assert "does not exist: pass the path of an existing folder" in capsys.readouterr().err

    def test_empty_root(self, tmp_path, capsys):
        (tmp_path / "empty").mkdir()
        args = ["embed", str(tmp_path / "empty"), "--out", str(tmp_path / "e.npy")]
        assert main(args) == 2
        assert capsys.readouterr().err.startswith("sktransfer: error: No images in")

    @pytest.mark.parametrize("command", ["embed", "predict"])
    def test_no_images_names_the_extensions_flag(self, command, tmp_path, capsys):
        folder = tmp_path / "scans"
        folder.mkdir()
        (folder / "a.jp2").write_bytes(b"a kind of image not listed by default")
        model = tmp_path / "model.pkl"
        model.write_bytes(b"never loaded: the folder is listed first")
        if command == "embed":
            args = ["embed", str(folder), "--out", str(tmp_path / "out.npy")]
        else:
            args = ["predict", str(model), str(folder), "--out", str(tmp_path / "out.csv")]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sktransfer: error: No images in {folder}: ")
        assert "found 1 files with other extensions such as 'a.jp2'" in err
        assert "Pass --extensions (such as --extensions .tif,.bmp) to list other kinds" in err
        assert "extensions=" not in err

    def test_estimator_parameter_errors_exit_2(self, root, tiny_checkpoint, tmp_path, capsys):
        out = tmp_path / "e.npy"
        assert main(embed_args(root, out, tiny_checkpoint, "--layer", "99")) == 2
        err = capsys.readouterr().err
        assert err.startswith("sktransfer: error: layer=99 is out of range")
        assert "Traceback" not in err and not out.exists()

    @pytest.mark.parametrize("suffix", [".npy", ".parquet"])
    def test_a_corrupt_image_leaves_the_old_output_untouched(
        self, suffix, root, tiny_checkpoint, tmp_path, capsys
    ):
        folder = tmp_path / "images"
        save_images(colour_images(LABELS[:6]), folder)
        (folder / "4.png").write_bytes(b"not an image")  # in the second chunk of 4
        out = tmp_path / f"old{suffix}"
        out.write_bytes(b"the previous output")
        assert main(embed_args(folder, out, tiny_checkpoint)) == 2
        err = capsys.readouterr().err
        assert f"error: Image 4 ('{folder / '4.png'}') is not an image file" in err
        assert out.read_bytes() == b"the previous output"
        assert sorted(os.listdir(tmp_path)) == ["images", f"old{suffix}"]  # no temporary left

    def test_a_scheduler_that_does_not_answer_exits_1(
        self, root, tiny_checkpoint, tmp_path, capsys
    ):
        pytest.importorskip("distributed")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        address = f"tcp://127.0.0.1:{port}"
        out = tmp_path / "e.npy"
        extra = ["--dask-scheduler", address, "--dask-timeout", "1"]
        assert main(embed_args(root, out, tiny_checkpoint, *extra)) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"sktransfer: error: No Dask scheduler answered at {address!r}")
        assert not out.exists()


# ---------------------------------------------------------------------- logits


@pytest.fixture(scope="module")
def logits(tiny_checkpoint, paths):
    """The class scores of the tiny model (1000 outputs, as ImageNet-1k's) for the folder."""
    extractor = tiny_extractor(weights=tiny_checkpoint, batch_size=CHUNK, layer="logits")
    return extractor.fit().transform(list(paths))


class TestLogits:
    @pytest.mark.parametrize("suffix", [".csv", ".parquet"])
    def test_top_k_writes_the_labels_and_softmax_scores(
        self, suffix, logits, root, paths, tiny_checkpoint, tmp_path, capsys
    ):
        out = tmp_path / f"top3{suffix}"
        extra = ["--layer", "logits", "--top-k", "3"]
        assert main(embed_args(root, out, tiny_checkpoint, *extra)) == 0
        assert capsys.readouterr().out.startswith(
            f"Embedded 14 images (top 3 labels each) into {out} in "
        )
        if suffix == ".csv":
            rows = read_csv(out)
        else:
            table = pytest.importorskip("pyarrow.parquet").read_table(out)
            assert [str(t) for t in table.schema.types] == ["string"] * 4 + ["double"] * 3
            rows = table.to_pylist()
        columns = ["path", "label_1", "label_2", "label_3", "score_1", "score_2", "score_3"]
        assert list(rows[0]) == columns
        assert [r["path"] for r in rows] == relative(paths, root)
        expected = top_imagenet_labels(logits, k=3)
        assert [[r[f"label_{j}"] for j in (1, 2, 3)] for r in rows] == [
            [label for label, _ in top] for top in expected
        ]
        scores = [[float(r[f"score_{j}"]) for j in (1, 2, 3)] for r in rows]
        assert scores == [[score for _, score in top] for top in expected]
        assert sorted(os.listdir(tmp_path)) == [out.name]

    def test_top_k_needs_a_model_with_1000_outputs(self, root, tmp_path, capsys):
        weights = tmp_path / "ten_classes.pth"
        save_checkpoint(weights, TINY_MODEL, num_classes=10)
        out = tmp_path / "top.csv"
        extra = ["--layer", "logits", "--top-k", "2"]
        assert main(embed_args(root, out, weights, *extra)) == 2
        assert capsys.readouterr().err == (
            f"sktransfer: error: --top-k names ImageNet-1k classes, and {TINY_MODEL} gives 10 "
            "class scores, not 1000. Pick a model with an ImageNet-1k head (such as "
            "efficientnet_b0.ra_in1k), or leave out --top-k to write its 10 scores.\n"
        )
        assert not out.exists()

    def test_top_k_writes_no_npy(self, root, tmp_path, capsys):
        out = tmp_path / "top.npy"
        args = ["embed", str(root), "--out", str(out), "--layer", "logits", "--top-k", "2"]
        assert main(args) == 2
        assert capsys.readouterr().err == (
            f"sktransfer: error: --out {str(out)!r}: cannot write .npy; the supported formats "
            "with --top-k are .csv, .parquet. Name the output accordingly.\n"
        )

    def test_parquet_logits_are_named_after_the_imagenet_classes(
        self, logits, root, tiny_checkpoint, tmp_path
    ):
        pq = pytest.importorskip("pyarrow.parquet")
        out = tmp_path / "logits.parquet"
        assert main(embed_args(root, out, tiny_checkpoint, "--layer", "logits")) == 0
        table = pq.read_table(out)
        names = table.column_names[1:]
        assert names[:2] == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
        assert (names[134], names[517]) == ("crane (134)", "crane (517)")  # one name, 2 classes
        assert [n.split(" (")[0] for n in names] == [
            n.split(" (")[0] for n in imagenet_label_names()
        ]
        assert len(set(names)) == 1000
        rows = np.column_stack([table.column(n).to_numpy() for n in names])
        np.testing.assert_array_equal(rows, logits)

    def test_parquet_logits_of_another_head_keep_the_feature_names(self, root, tmp_path):
        pq = pytest.importorskip("pyarrow.parquet")
        weights = tmp_path / "ten_classes.pth"
        save_checkpoint(weights, TINY_MODEL, num_classes=10)
        out = tmp_path / "logits.parquet"
        assert main(embed_args(root, out, weights, "--layer", "logits")) == 0
        names = [f"pretrainedfeatureextractor{j}" for j in range(10)]
        assert pq.read_table(out).column_names == ["path", *names]


# ---------------------------------------------------------------------- bad images


class TestSkipBadImages:
    @pytest.mark.parametrize("suffix", [".npy", ".parquet"])
    def test_embed_leaves_them_out_and_lists_them(
        self, suffix, reference, tiny_checkpoint, tmp_path, capsys
    ):
        folder, good = folder_with_bad_images(tmp_path / "images")
        out = tmp_path / f"e{suffix}"
        assert main(embed_args(folder, out, tiny_checkpoint, "--skip-bad-images")) == 0
        report = tmp_path / "e.skipped.csv"
        summary = capsys.readouterr().out
        assert summary.startswith(f"Embedded 4 images (256 features each) into {out} in ")
        assert summary.endswith(f" s; skipped 2 unreadable images (listed in {report}).\n")
        expected = reference[0].transform(good)
        if suffix == ".npy":
            rows = np.load(out)  # the header states the 4 rows written, not 6
            names = (tmp_path / "e.paths.txt").read_text(encoding="utf-8").splitlines()
        else:
            table = pytest.importorskip("pyarrow.parquet").read_table(out)
            rows = np.column_stack([c.to_numpy() for c in table.columns[1:]])
            names = table.column("path").to_pylist()
        assert_same_embedding(rows, expected)
        assert names == ["0.png", "2.png", "3.png", "5.png"]
        skipped = read_csv(report)
        assert [list(r) for r in skipped] == [["path", "error"]] * 2
        assert [r["path"] for r in skipped] == ["1.png", "4.png"]
        assert skipped[0]["error"].startswith(
            f"Image 1 ('{folder / '1.png'}') is truncated or corrupt: "
        )
        assert (
            skipped[1]["error"]
            == f"Image 4 ('{folder / '4.png'}') is not an image file PIL can decode."
        )

    def test_predict_leaves_them_out_and_lists_them(self, classifier, tmp_path, capsys):
        folder, good = folder_with_bad_images(tmp_path / "images")
        model_file, out = tmp_path / "model.joblib", tmp_path / "p.csv"
        joblib.dump(classifier, model_file)
        args = ["predict", str(model_file), str(folder), "--out", str(out), "--chunk-size", "4"]
        assert main([*args, "--skip-bad-images", "--no-progress"]) == 0
        summary = capsys.readouterr().out
        assert summary.startswith(f"Predicted 4 images into {out} in ")
        report = tmp_path / "p.skipped.csv"
        assert summary.endswith(f" s; skipped 2 unreadable images (listed in {report}).\n")
        rows = read_csv(out)
        assert [r["path"] for r in rows] == ["0.png", "2.png", "3.png", "5.png"]
        assert [r["prediction"] for r in rows] == classifier.predict(good).tolist()
        assert [r["path"] for r in read_csv(report)] == ["1.png", "4.png"]

    def test_none_skipped_gives_an_empty_list_and_a_later_run_without_the_flag_removes_it(
        self, root, tiny_checkpoint, tmp_path, capsys
    ):
        out, report = tmp_path / "e.npy", tmp_path / "e.skipped.csv"
        assert main(embed_args(root, out, tiny_checkpoint, "--skip-bad-images")) == 0
        assert capsys.readouterr().out.endswith(
            f" s; skipped 0 unreadable images (listed in {report}).\n"
        )
        assert report.read_bytes() == b"path,error\r\n"  # the csv module's line ends
        assert main(embed_args(root, out, tiny_checkpoint)) == 0
        assert sorted(os.listdir(tmp_path)) == ["e.npy", "e.paths.txt"]  # it described another run

    def test_every_image_unreadable_writes_nothing(self, tiny_checkpoint, tmp_path, capsys):
        folder = tmp_path / "images"
        folder.mkdir()
        for name in ("a.png", "b.png"):
            (folder / name).write_bytes(b"not an image")
        out = tmp_path / "e.npy"
        assert main(embed_args(folder, out, tiny_checkpoint, "--skip-bad-images")) == 2
        assert capsys.readouterr().err == (
            f"sktransfer: error: None of the 2 images under {folder} can be read, so nothing "
            f"was written. The first: Image 0 ('{folder / 'a.png'}') is not an image file PIL "
            "can decode.\n"
        )
        assert sorted(os.listdir(tmp_path)) == ["images"]

    def test_a_failed_run_leaves_the_npy_and_its_paths_untouched(
        self, tiny_checkpoint, tmp_path, capsys
    ):
        folder, _ = folder_with_bad_images(tmp_path / "images")
        out, paths_file = tmp_path / "e.npy", tmp_path / "e.paths.txt"
        out.write_bytes(b"the previous output")
        paths_file.write_text("its paths\n")
        assert main(embed_args(folder, out, tiny_checkpoint)) == 2  # no --skip-bad-images
        err = capsys.readouterr().err
        assert err.startswith(f"sktransfer: error: Image 1 ('{folder / '1.png'}') is truncated")
        assert out.read_bytes() == b"the previous output"
        assert paths_file.read_text() == "its paths\n"
        assert sorted(os.listdir(tmp_path)) == ["e.npy", "e.paths.txt", "images"]

    def test_the_error_names_the_file_and_travels_whole(self, fitted, tmp_path):
        folder, _ = folder_with_bad_images(tmp_path / "images")
        files = sorted(str(p) for p in folder.iterdir())
        with pytest.raises(UnreadableImageError, match=r"^Image 1 \(.*\) is truncated") as info:
            fitted.transform(files)
        copy = pickle.loads(pickle.dumps(info.value))  # as Dask sends it back
        for error in (info.value, copy):
            assert isinstance(error, ValueError)
            assert (error.index, error.path) == (1, str(folder / "1.png"))
            assert str(error) == str(info.value)


# ---------------------------------------------------------------------- Dask


@pytest.mark.slow
def test_dask_scheduler_gives_the_local_output(
    root, reference, classifier, tiny_checkpoint, tmp_path
):
    distributed = pytest.importorskip("distributed")
    model_file = tmp_path / "model.joblib"
    joblib.dump(classifier, model_file)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        extra = ["--dask-scheduler", cluster.scheduler_address]
        out = tmp_path / "embeddings.parquet"
        assert main(embed_args(root, out, tiny_checkpoint, *extra)) == 0
        predictions = tmp_path / "predictions.csv"
        args = ["predict", str(model_file), str(root), "--out", str(predictions), "--no-progress"]
        assert main([*args, "--chunk-size", "8", *extra]) == 0
    local = tmp_path / "local.csv"
    assert main([*args[:4], str(local), "--no-progress"]) == 0
    table = pytest.importorskip("pyarrow.parquet").read_table(out)
    names = list(reference[0].get_feature_names_out())
    assert_same_embedding(
        np.column_stack([table.column(n).to_numpy() for n in names]), reference[1]
    )
    on_dask, here = read_csv(predictions), read_csv(local)
    assert [r["path"] for r in on_dask] == [r["path"] for r in here]
    assert [r["prediction"] for r in on_dask] == [r["prediction"] for r in here]
    np.testing.assert_allclose(
        [[float(r["proba_green"]), float(r["proba_red"])] for r in on_dask],
        [[float(r["proba_green"]), float(r["proba_red"])] for r in here],
        rtol=1e-5,
        atol=1e-6,
    )
