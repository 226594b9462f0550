"""Helpers shared by the command-line tests (``test_cli.py``, ``test_cli_explain.py``):
reading what a command wrote, and a folder of images with unreadable ones among them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from _finetune_fixtures import colour_images
from conftest import save_images


def folder_with_bad_images(folder) -> tuple[Path, list[str]]:
    """Six colour images (classes 0, 1, 0, 1, 0, 1) in ``folder``, two of them unreadable:
    ``1.png`` (truncated, in the first chunk of 4) and ``4.png`` (not an image, in the
    second chunk). Returns the folder and the paths of the readable ones (as strings)."""
    folder = Path(folder)
    files = save_images(colour_images(np.arange(6) % 2), folder)
    (folder / "1.png").write_bytes((folder / "1.png").read_bytes()[:200])
    (folder / "4.png").write_bytes(b"not an image")
    return folder, [str(files[i]) for i in (0, 2, 3, 5)]


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
