"""Image collections as file paths and targets, read where they are.

Nothing is downloaded, copied or decoded: ``load_image_folder`` lists a folder (one
sub-folder per class, or unlabelled), ``from_csv`` reads a manifest of paths and labels,
and ``load_elpv`` reads the label file of an installed package. Each returns absolute
image paths, which every sktransfer estimator decodes lazily.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._options import IMAGE_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "from_csv", "load_elpv", "load_image_folder"]


def load_elpv() -> Bunch:
    """The ELPV solar-cell images: 2,624 greyscale 300x300 electroluminescence images of
    solar-cell crops, with an expert-rated defect probability and the cell technology.

    The images come from the ``elpv-dataset`` package (``pip install elpv-dataset``, or
    the ``examples`` extra of sktransfer), licensed CC BY-NC-SA 4.0 by its authors
    (Buerhop-Lutz et al., 2018; Deitsch et al., 2019): read them in place, do not
    redistribute them. Only ``labels.csv`` is read here.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``paths`` (ndarray of str, absolute image paths, dataset order),
        ``defect_probability`` (ndarray of float: 0, 1/3, 2/3 or 1),
        ``cell_type`` (ndarray of str: ``"mono"`` or ``"poly"``, monocrystalline or
        polycrystalline) and ``DESCR``.

    Raises
    ------
    ImportError
        If ``elpv-dataset`` is not installed.

    Examples
    --------
    >>> from sktransfer.datasets import load_elpv
    >>> cells = load_elpv()  # doctest: +SKIP
    >>> len(cells.paths), sorted(set(cells.cell_type))  # doctest: +SKIP
    (2624, ['mono', 'poly'])
    """
    try:
        import elpv_dataset
    except ImportError as exc:
        raise ImportError(
            "load_elpv needs the elpv-dataset package: pip install elpv-dataset (or "
            "pip install 'sktransfer[examples]')."
        ) from exc
    data_dir = Path(elpv_dataset.__file__).parent / "data"
    labels = np.genfromtxt(
        data_dir / "labels.csv",
        dtype=["U64", "f8", "U4"],
        names=["path", "probability", "type"],
        encoding="utf-8",
    )
    return Bunch(
        paths=np.array([str(data_dir / p) for p in labels["path"]]),
        defect_probability=labels["probability"],
        cell_type=labels["type"],
        DESCR=load_elpv.__doc__.split("\n\n")[0],
    )


def load_image_folder(
    root,
    *,
    labelled: bool = True,
    extensions=IMAGE_EXTENSIONS,
    return_X_y: bool = False,
):
    """List the images of a folder, with one sub-folder per class or without labels.

    With ``labelled=True`` (the layout of torchvision's ``ImageFolder`` and of
    ``sklearn.datasets.load_files``) each immediate sub-folder of ``root`` is a class
    named after the folder, and holds its images at any depth. With ``labelled=False``
    every image under ``root``, at any depth, is listed without a target: what a batch
    job that embeds a folder needs.

    Files are listed, never opened: the estimators decode them lazily. Hidden files and
    folders (names starting with ``"."``) are skipped; symbolic links to folders are
    followed, except those that lead back to one of their own parent folders.

    Parameters
    ----------
    root : str or path-like
        The folder to list.
    labelled : bool, default=True
        Whether the sub-folders of ``root`` are classes.
    extensions : str or tuple of str, default=IMAGE_EXTENSIONS
        File name endings of the images to list, with their dot, compared
        case-insensitively (``".PNG"`` is an image).
    return_X_y : bool, default=False
        Return ``(paths, target)`` instead of a Bunch.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``paths`` (ndarray of str: absolute paths, sorted by their path relative to
        ``root`` compared folder by folder, so that both modes list a class tree in the
        same order), ``target`` (ndarray of str: the class folder name of each image, so
        that a classifier's ``classes_`` are folder names; unlike ``load_files``, which
        gives integers; None with ``labelled=False``), ``target_names`` (ndarray of str,
        the sorted class names; None with ``labelled=False``) and ``DESCR``.
    (paths, target) : tuple
        With ``return_X_y=True``.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    NotADirectoryError
        If ``root`` is not a folder.
    ValueError
        If there are no images, or with ``labelled=True``: if images lie directly in
        ``root``, if a class folder holds no image, or if there is only one class.

    See Also
    --------
    from_csv : Paths and labels listed in a CSV file.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from sktransfer.datasets import load_image_folder
    >>> with tempfile.TemporaryDirectory() as root:
    ...     for name in ["cat/1.png", "cat/2.png", "dog/puppies/1.jpg"]:
    ...         (Path(root) / name).parent.mkdir(parents=True, exist_ok=True)
    ...         Image.new("RGB", (8, 8)).save(Path(root) / name)
    ...     pets = load_image_folder(root)
    ...     [Path(p).relative_to(root).as_posix() for p in pets.paths]
    ['cat/1.png', 'cat/2.png', 'dog/puppies/1.jpg']
    >>> pets.target.tolist(), pets.target_names.tolist()
    (['cat', 'cat', 'dog'], ['cat', 'dog'])
    """
    root = _check_folder(root)
    extensions = _lower_extensions(extensions)
    images, others = _walk(root, extensions)
    if not images:
        raise NoImagesError(root, extensions, others)
    target = target_names = None
    if labelled:
        target = np.array([parts[0] for parts in images])
        target_names = _check_classes(root, images, extensions)
        descr = f"{len(images)} images in {len(target_names)} class folders of {root}."
    else:
        descr = f"{len(images)} images under {root}, unlabelled."
    paths = np.array([os.path.join(root, *parts) for parts in images])
    if return_X_y:
        return paths, target
    return Bunch(paths=paths, target=target, target_names=target_names, DESCR=descr)


def _check_folder(root) -> str:
    root = os.path.abspath(os.fspath(root))
    if not os.path.exists(root):
        raise FileNotFoundError(
            f"The image folder {root} does not exist: pass the path of an existing folder."
        )
    if not os.path.isdir(root):
        raise NotADirectoryError(
            f"{root} is a file, not a folder: pass the folder that holds the images (or, "
            "for a CSV list of images, use sktransfer.datasets.from_csv)."
        )
    return root


def _lower_extensions(extensions) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    return tuple(ext.lower() for ext in extensions)


def _walk(root: str, extensions: tuple[str, ...]) -> tuple[list, list]:
    """Images and other files under ``root``, as sorted tuples of path parts."""
    images, others = [], []
    stack = [((), frozenset([_identity(root)]))]
    while stack:
        parts, ancestors = stack.pop()
        with os.scandir(os.path.join(root, *parts)) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    identity = _identity(entry.path)
                    if identity not in ancestors:  # a symbolic link loop otherwise
                        stack.append(((*parts, entry.name), ancestors | {identity}))
                elif entry.name.lower().endswith(extensions):
                    images.append((*parts, entry.name))
                elif entry.is_file():
                    others.append((*parts, entry.name))
    return sorted(images), sorted(others)


def _identity(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


class NoImagesError(ValueError):
    """No file under a folder ends in one of the image extensions looked for.

    ``root``, ``extensions`` and ``others`` (the other files found, as tuples of path
    parts) say what was looked for and found; ``option`` names how to pass other
    extensions, in the message (``extensions=`` in Python, a flag on a command line).
    """

    def __init__(self, root: str, extensions: tuple, others: list, option="extensions="):
        self.root, self.extensions, self.others, self.option = root, extensions, others, option
        super().__init__(_no_images_message(root, extensions, others, option))

    def __reduce__(self):  # pickled as it was made (a worker process may raise it)
        return type(self), (self.root, self.extensions, self.others, self.option)


def _no_images_message(root: str, extensions: tuple, others: list, option: str) -> str:
    if others:
        found = f"found {len(others)} files with other extensions such as '{'/'.join(others[0])}'"
    else:
        found = "found no files"
    return (
        f"No images in {root}: looked for files ending in {', '.join(extensions)} "
        f"(any case) in it and its sub-folders, skipping hidden ones, and {found}. "
        f"Pass {option} to list other kinds of files, or the folder that holds the images."
    )


def _check_classes(root: str, images: list, extensions: tuple[str, ...]) -> np.ndarray:
    """The sorted class names; raises unless the images form at least two classes."""
    with os.scandir(root) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and e.name[0] != ".")
    loose = [parts[0] for parts in images if len(parts) == 1]
    classes = sorted({parts[0] for parts in images if len(parts) > 1})
    if loose and not classes:
        raise ValueError(
            f"labelled=True expects one sub-folder of images per class in {root}, and "
            f"found {len(loose)} images directly in it and none in a sub-folder. Pass "
            "labelled=False to list them without labels, or move them into one sub-folder "
            "per class."
        )
    if loose:
        raise ValueError(
            f"{len(loose)} images lie directly in {root}, next to its class folders, "
            f"such as '{loose[0]}': with labelled=True every image must be in a class "
            "folder. Move them into their class folder, or pass labelled=False to list "
            "every image without labels."
        )
    empty = [name for name in folders if name not in classes]
    if empty:
        names = ", ".join(map(repr, empty))
        raise ValueError(
            f"{len(empty)} class folders of {root} hold no image (no file ending in "
            f"{', '.join(extensions)}): {names}. Add their images, or remove them, since "
            "an empty class is a class the data lacks."
        )
    if len(classes) < 2:
        raise ValueError(
            f"{root} has only one class folder, '{classes[0]}': a classifier needs at "
            "least two classes, one sub-folder each. Add the other classes, or point "
            f"root at '{classes[0]}' and pass labelled=False to list its images."
        )
    return np.array(classes)


def from_csv(
    path,
    image_column: str,
    label_column: str | None = None,
    *,
    encoding: str = "utf-8",
    return_X_y=False,
):
    """Read the image paths (and labels) listed in a CSV manifest.

    The file starts with a header row that names its columns; it is read with the
    standard library's ``csv`` module (comma-separated, in ``encoding``; a UTF-8 file
    may start with a byte-order mark). Relative image paths are resolved against the
    folder of the CSV file, not the working directory, so that a manifest travels with
    its images. The listed files are not checked to exist: they may exist only where the
    job runs (say, on cluster workers), and the estimators name the image by index and
    path when one cannot be read.

    Parameters
    ----------
    path : str or path-like
        The CSV file.
    image_column : str
        The column that holds the image file paths.
    label_column : str, default=None
        The column that holds the labels, read as strings; None for no target.
    encoding : str, default="utf-8"
        The text encoding of the file, any that Python knows: ``"latin-1"``,
        ``"cp1252"`` (Excel on Windows), ...
    return_X_y : bool, default=False
        Return ``(paths, target)`` instead of a Bunch.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``paths`` (ndarray of str: absolute paths, in file order), ``target`` (ndarray of
        str, or None without ``label_column``), ``target_names`` (ndarray of str, the
        sorted distinct labels, or None) and ``DESCR``.
    (paths, target) : tuple
        With ``return_X_y=True``.

    Raises
    ------
    FileNotFoundError
        If the CSV file does not exist.
    IsADirectoryError
        If ``path`` is a folder.
    ValueError
        If the file has no data row, lacks a named column, or has an empty image or label
        cell (named by its data row, counted from 1, and its line in the file); if its
        bytes are not text in ``encoding`` (the message names the line and suggests an
        encoding), or ``encoding`` is not one Python knows.

    See Also
    --------
    load_image_folder : Images listed from a folder, one sub-folder per class.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sktransfer.datasets import from_csv
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     manifest = Path(folder) / "train.csv"
    ...     _ = manifest.write_text("file,label\\nimages/a.png,ok\\nimages/b.png,defect\\n")
    ...     cells = from_csv(manifest, "file", "label")
    ...     [Path(p).relative_to(folder).as_posix() for p in cells.paths]
    ['images/a.png', 'images/b.png']
    >>> cells.target.tolist(), cells.target_names.tolist()
    (['ok', 'defect'], ['defect', 'ok'])
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"The manifest {path} does not exist: pass the path of a CSV file.")
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"The manifest {path} is a folder, not a CSV file: pass the CSV file, or list "
            "the folder's images with sktransfer.datasets.load_image_folder."
        )
    codec = _codec(encoding)
    columns = [image_column] if label_column is None else [image_column, label_column]
    cells = _read_columns(path, columns, codec)
    folder = os.path.dirname(path)
    paths = np.array([os.path.abspath(os.path.join(folder, cell)) for cell in cells[0]])
    target = None if label_column is None else np.array(cells[1])
    target_names = None if target is None else np.unique(target)
    if return_X_y:
        return paths, target
    descr = f"{len(paths)} images listed in {path}."
    return Bunch(paths=paths, target=target, target_names=target_names, DESCR=descr)


def _read_columns(path: str, columns: list[str], codec: str) -> list[list[str]]:
    """The cells of ``columns``, one list per column; raises on a missing column or cell."""
    header, rows = _read_rows(path, codec)
    index = [_column_index(path, header, name) for name in columns]
    values = [[] for _ in columns]
    for number, (line, row) in enumerate(rows, start=1):
        for name, i, column in zip(columns, index, values, strict=True):
            cell = row[i] if i < len(row) else ""
            if not cell.strip():
                raise ValueError(
                    f"Row {number} of the manifest {path} (line {line}) has an empty "
                    f"{name!r} cell: every row needs one. Fill it in or remove the row."
                )
            column.append(cell)
    return values


def _codec(encoding: str) -> str:
    """The codec that reads ``encoding`` (UTF-8 with its optional byte-order mark)."""
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError) as exc:
        raise ValueError(
            f"encoding={encoding!r} is not a text encoding Python knows: pass one such as "
            "'utf-8', 'latin-1' or 'cp1252'."
        ) from exc
    return "utf-8-sig" if name == "utf-8" else name


def _read_rows(path: str, codec: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the data rows with the line each ends on; blank lines are skipped."""
    with open(path, "rb") as f:
        data = f.read()
    reader = csv.reader(io.StringIO(_decoded(path, data, codec), newline=""))
    header = next(reader, None)
    rows = [(reader.line_num, row) for row in reader if row]
    if header is None or not rows:
        raise ValueError(
            f"The manifest {path} has no data rows: expected a header row that names the "
            "columns, then one row per image."
        )
    return header, rows


def _decoded(path: str, data: bytes, codec: str) -> str:
    """The text of the file ``path``; raises naming the line of the first undecodable byte."""
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        shown = "utf-8" if codec == "utf-8-sig" else codec
        other = "latin-1" if shown == "utf-8" else "utf-8"
        raise ValueError(
            f"The manifest {path} is not {shown} text: line {line} has the byte "
            f"{data[exc.start]:#04x} at column {column}, which {shown} cannot decode. Pass "
            f'the encoding it was saved in, such as encoding="{other}" (or "cp1252" for '
            "Excel on Windows), or save it as UTF-8."
        ) from exc


def _column_index(path: str, header: list[str], name: str) -> int:
    if name not in header:
        raise ValueError(
            f"The manifest {path} has no column {name!r}; its columns are "
            f"{', '.join(map(repr, header))}. Pass one of them."
        )
    return header.index(name)
