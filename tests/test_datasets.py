"""Tests of sktransfer.datasets: image folders and CSV manifests as paths and targets."""

from __future__ import annotations

import os
import pickle
import re

import pytest
from conftest import tiny_extractor
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from sktransfer.datasets import IMAGE_EXTENSIONS, NoImagesError, from_csv, load_image_folder

# A class tree whose component-wise order differs from the order of the joined strings:
# "cat-big/b.png" < "cat/a.PNG" as strings ("-" < "/"), but ("cat", ...) < ("cat-big", ...).
TREE = ["dog/b.png", "cat/z.jpg", "cat-big/b.png", "cat/nested/deep/c.png", "cat/a.PNG"]
ORDER = ["cat/a.PNG", "cat/nested/deep/c.png", "cat/z.jpg", "cat-big/b.png", "dog/b.png"]


def write(root, *names, text=None):
    """Write small images (or, with ``text``, text files) at ``root / name``."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            Image.new("RGB", (8, 8), (40, 80, 120)).save(path)
        else:
            path.write_text(text)


def absolute(root, names):
    return [os.path.join(os.path.abspath(root), *name.split("/")) for name in names]


@pytest.fixture
def tree(tmp_path):
    write(tmp_path, *TREE)
    return tmp_path


class TestLoadImageFolder:
    def test_class_tree_sorted_by_path_parts_absolute_with_folder_names(self, tree):
        data = load_image_folder(tree)
        assert data.paths.tolist() == absolute(tree, ORDER)
        assert data.paths.dtype.kind == "U"
        assert data.target.tolist() == ["cat", "cat", "cat", "cat-big", "dog"]
        assert data.target.dtype.kind == "U"
        assert data.target_names.tolist() == ["cat", "cat-big", "dog"]
        assert "5 images in 3 class folders" in data.DESCR

    def test_relative_root_gives_absolute_paths(self, tree, monkeypatch):
        monkeypatch.chdir(tree.parent)
        data = load_image_folder(tree.name)
        assert data.paths.tolist() == absolute(tree, ORDER)

    def test_other_extensions_and_hidden_files_and_folders_skipped(self, tree):
        write(tree, "cat/notes.txt", "labels.csv", text="x")
        write(tree, "cat/.hidden.png", "dog/.thumbs/x.png", ".git/x.png", ".cache/a/x.png")
        assert load_image_folder(tree).paths.tolist() == absolute(tree, ORDER)
        assert load_image_folder(tree, labelled=False).paths.tolist() == absolute(tree, ORDER)

    def test_extensions_case_insensitive_and_a_single_string(self, tree):
        write(tree, "cat/notes.txt", "dog/more.TXT", text="x")
        data = load_image_folder(tree, labelled=False, extensions=".Txt")
        assert data.paths.tolist() == absolute(tree, ["cat/notes.txt", "dog/more.TXT"])
        assert ".PNG" not in IMAGE_EXTENSIONS and {".png", ".jpg", ".tiff"} <= set(IMAGE_EXTENSIONS)

    def test_unlabelled_lists_the_same_files_in_the_same_order(self, tree):
        data = load_image_folder(tree, labelled=False)
        assert data.paths.tolist() == load_image_folder(tree).paths.tolist()
        assert data.target is None and data.target_names is None

    def test_unlabelled_lists_images_in_root_and_below(self, tmp_path):
        write(tmp_path, "b.png", "a/c.jpg", "a.png")
        data = load_image_folder(tmp_path, labelled=False)
        assert data.paths.tolist() == absolute(tmp_path, ["a/c.jpg", "a.png", "b.png"])

    def test_return_X_y(self, tree):
        paths, target = load_image_folder(tree, return_X_y=True)
        assert paths.tolist() == absolute(tree, ORDER)
        assert target.tolist() == ["cat", "cat", "cat", "cat-big", "dog"]
        paths, target = load_image_folder(tree, labelled=False, return_X_y=True)
        assert paths.tolist() == absolute(tree, ORDER) and target is None

    def test_follows_folder_links_and_stops_at_link_loops(self, tmp_path):
        outside = tmp_path / "outside"
        write(outside, "dog/a.png")
        root = tmp_path / "root"
        write(root, "cat/a.png")
        try:
            os.symlink(outside / "dog", root / "dog", target_is_directory=True)
            os.symlink(root / "cat", root / "cat" / "loop", target_is_directory=True)
        except (OSError, NotImplementedError):
            pytest.skip("this file system cannot make symbolic links")
        data = load_image_folder(root)
        assert data.paths.tolist() == absolute(root, ["cat/a.png", "dog/a.png"])

    def test_paths_and_target_feed_an_extractor_and_a_classifier(self, tree, one_torch_thread):
        data = load_image_folder(tree)
        assert tiny_extractor().fit_transform(data.paths).shape[0] == len(ORDER)
        probe = make_pipeline(tiny_extractor(), LogisticRegression()).fit(data.paths, data.target)
        assert probe.classes_.tolist() == data.target_names.tolist()


class TestLoadImageFolderErrors:
    def test_missing_root(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist: pass the path of an"):
            load_image_folder(tmp_path / "nope")

    def test_root_is_a_file(self, tmp_path):
        write(tmp_path, "a.png")
        with pytest.raises(NotADirectoryError, match="is a file, not a folder.*from_csv"):
            load_image_folder(tmp_path / "a.png")

    @pytest.mark.parametrize("labelled", [True, False])
    def test_no_images_counts_other_files(self, tmp_path, labelled):
        write(tmp_path, "a.txt", "b.csv", "sub/c.md", ".hidden.png", text="x")
        message = (
            f"No images in {re.escape(str(tmp_path))}: looked for files ending in "
            r"\.bmp, \.gif, .*\.webp \(any case\).* found 3 files with other extensions "
            "such as 'a.txt'"
        )
        with pytest.raises(ValueError, match=message):
            load_image_folder(tmp_path, labelled=labelled)

    def test_empty_folder(self, tmp_path):
        with pytest.raises(ValueError, match="and found no files. Pass extensions="):
            load_image_folder(tmp_path)

    def test_no_images_error_is_a_value_error_that_keeps_what_it_found(self, tmp_path):
        write(tmp_path, "scan.tif.gz", text="x")
        with pytest.raises(NoImagesError) as error:
            load_image_folder(tmp_path, extensions=".tif")
        assert isinstance(error.value, ValueError)
        assert (error.value.root, error.value.extensions) == (str(tmp_path), (".tif",))
        assert error.value.others == [("scan.tif.gz",)]
        assert str(pickle.loads(pickle.dumps(error.value))) == str(error.value)

    def test_images_in_root_without_class_folders(self, tmp_path):
        write(tmp_path, "a.png", "b.png")
        write(tmp_path, "notes/readme.txt", text="a folder without images is no class")
        message = "found 2 images directly in it and none in a sub-folder. Pass labelled=False"
        with pytest.raises(ValueError, match=message):
            load_image_folder(tmp_path)

    def test_images_in_root_next_to_class_folders(self, tree):
        write(tree, "stray.png", "also.jpg")
        message = "2 images lie directly in .* such as 'also.jpg'.*Move them into their class"
        with pytest.raises(ValueError, match=message):
            load_image_folder(tree)

    def test_one_class(self, tmp_path):
        write(tmp_path, "cat/a.png", "cat/b.png")
        message = (
            "only one class folder, 'cat': a classifier needs at least two classes.*labelled=False"
        )
        with pytest.raises(ValueError, match=message):
            load_image_folder(tmp_path)

    def test_class_folder_without_images(self, tree):
        write(tree, "bird/readme.txt", text="x")
        (tree / "ant").mkdir()
        message = (
            r"2 class folders of .* hold no image \(no file ending in \.bmp.*\): 'ant', 'bird'\."
        )
        with pytest.raises(ValueError, match=message):
            load_image_folder(tree)


@pytest.fixture
def manifest(tmp_path):
    """Write a CSV file in ``tmp_path / "data"`` from its lines; return its path."""

    def make(*lines, encoding="utf-8"):
        path = tmp_path / "data" / "manifest.csv"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding=encoding)
        return path

    return make


class TestFromCsv:
    def test_paths_resolved_against_the_csv_folder_and_never_checked(
        self, manifest, tmp_path, monkeypatch
    ):
        elsewhere = tmp_path / "elsewhere" / "c.png"
        path = manifest(
            "id,file,label", "1,images/a.png,ok", "2,../b.png,defect", f"3,{elsewhere},ok"
        )
        monkeypatch.chdir(tmp_path.parent)  # not the folder of the manifest
        data = from_csv(path, "file", "label")
        folder = tmp_path / "data"
        assert data.paths.tolist() == [
            str(folder / "images" / "a.png"),
            str(tmp_path / "b.png"),
            str(elsewhere),
        ]
        assert data.paths.dtype.kind == "U" and not os.path.exists(data.paths[0])
        assert data.target.tolist() == ["ok", "defect", "ok"] and data.target.dtype.kind == "U"
        assert data.target_names.tolist() == ["defect", "ok"]

    def test_no_label_column_and_return_X_y(self, manifest, tmp_path):
        path = manifest("file", "a.png", "", "b.png")  # a blank line is skipped
        data = from_csv(path, "file")
        assert data.paths.tolist() == absolute(tmp_path / "data", ["a.png", "b.png"])
        assert data.target is None and data.target_names is None
        paths, target = from_csv(path, "file", return_X_y=True)
        assert paths.tolist() == data.paths.tolist() and target is None
        paths, target = from_csv(manifest("file,y", "a.png,1"), "file", "y", return_X_y=True)
        assert target.tolist() == ["1"]

    def test_byte_order_mark_and_quoted_cells(self, manifest, tmp_path):
        path = manifest("file,label", '"a, b.png","x"', encoding="utf-8-sig")
        data = from_csv(path, "file", "label")
        assert data.paths.tolist() == absolute(tmp_path / "data", ["a, b.png"])

    @pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "UTF-16"])
    def test_encoding(self, manifest, encoding):
        path = manifest("fichier,étiquette", "a.png,défaut", "b.png,ok", encoding=encoding)
        data = from_csv(path, "fichier", "étiquette", encoding=encoding)
        assert data.target.tolist() == ["défaut", "ok"]

    def test_output_feeds_an_extractor(self, manifest, tmp_path, one_torch_thread):
        write(tmp_path / "data", "images/a.png", "images/b.jpg")
        paths, _ = from_csv(
            manifest("file", "images/a.png", "images/b.jpg"), "file", return_X_y=True
        )
        assert tiny_extractor().fit_transform(paths).shape[0] == 2


class TestFromCsvErrors:
    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="manifest .*nope.csv does not exist"):
            from_csv(tmp_path / "nope.csv", "file")
        with pytest.raises(IsADirectoryError, match="is a folder, not a CSV file.*load_image_"):
            from_csv(tmp_path, "file")

    @pytest.mark.parametrize("columns", [("path", None), ("file", "class")])
    def test_missing_column_names_the_columns_present(self, manifest, columns):
        path = manifest("file,label,weight", "a.png,x,1")
        missing = columns[0] if columns[0] != "file" else columns[1]
        message = f"has no column '{missing}'; its columns are 'file', 'label', 'weight'"
        with pytest.raises(ValueError, match=message):
            from_csv(path, *columns)

    @pytest.mark.parametrize(
        "row, column", [(",x", "file"), ("b.png,", "label"), ("b.png", "label"), ("  ,x", "file")]
    )
    def test_empty_cell_names_the_row_and_the_line(self, manifest, row, column):
        path = manifest("file,label", "a.png,x", "", row)
        message = rf"Row 2 of the manifest .*manifest.csv \(line 4\) has an empty '{column}' cell"
        with pytest.raises(ValueError, match=message):
            from_csv(path, "file", "label")

    def test_a_latin_1_file_read_as_utf_8_names_the_file_the_line_and_the_fix(self, manifest):
        path = manifest("file,label", "a.png,ok", "b.png,défaut", encoding="latin-1")
        message = (
            f"The manifest {re.escape(str(path))} is not utf-8 text: line 3 has the byte 0xe9 "
            "at column 8, which utf-8 cannot decode. Pass the encoding it was saved in, such as "
            'encoding="latin-1"'
        )
        with pytest.raises(ValueError, match=message):
            from_csv(path, "file", "label")

    def test_an_unknown_encoding(self, manifest):
        path = manifest("file", "a.png")
        with pytest.raises(ValueError, match="encoding='latin-9000' is not a text encoding"):
            from_csv(path, "file", encoding="latin-9000")

    @pytest.mark.parametrize("lines", [("file,label",), ()])
    def test_no_data_rows(self, manifest, lines):
        path = manifest(*lines)
        with pytest.raises(ValueError, match="has no data rows: expected a header row"):
            from_csv(path, "file", "label")
