"""mkdocs hooks (``hooks:`` in mkdocs.yml): the gallery's pictures, drawn at build time.

``on_files`` runs ``scripts/gallery.py`` into a temporary folder and adds each PNG it
draws to the site as ``gallery/<name>.png``, a generated file: nothing is written into
``docs/`` and nothing drawn is committed, yet ``mkdocs build --strict`` checks every
link of ``docs/gallery.md`` to them. When the script fails, so does the build, with its
output in the error.

The script runs in its own process (a fresh torch; it draws with matplotlib's Agg) and
takes about a minute on two CPU cores. To skip it, e.g. while editing prose under
``mkdocs serve``, point the environment variable ``SKTRANSFER_GALLERY_DIR`` at a folder
of PNGs drawn before (``python scripts/gallery.py OUT``): they are used as they are.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

GALLERY_SCRIPT = Path(__file__).resolve().with_name("gallery.py")
GALLERY_DIR_ENV = "SKTRANSFER_GALLERY_DIR"
SITE_FOLDER = "gallery"  # the PNGs' folder in the site, as docs/gallery.md links them

log = logging.getLogger(f"mkdocs.hooks.{__name__}")


def on_files(files, config):
    """Add the gallery's PNGs to the site's files, drawn now or taken from
    ``$SKTRANSFER_GALLERY_DIR``."""
    given = os.environ.get(GALLERY_DIR_ENV)
    if given:
        pngs = _read_pngs(Path(given), f"${GALLERY_DIR_ENV}")
        log.info("gallery: %d pictures taken from %s", len(pngs), given)
    else:
        with tempfile.TemporaryDirectory(prefix="sktransfer-gallery-") as folder:
            _draw(folder)
            pngs = _read_pngs(Path(folder), str(GALLERY_SCRIPT.name))
    for name, content in pngs.items():
        files.append(File.generated(config, f"{SITE_FOLDER}/{name}", content=content))
    return files


def _draw(folder):
    """Run the gallery script into ``folder``; raise PluginError with its output if it fails."""
    run = subprocess.run(
        [sys.executable, str(GALLERY_SCRIPT), folder],
        capture_output=True,
        text=True,
    )
    for line in run.stderr.splitlines():
        if line.startswith("gallery: "):
            log.info(line)
    if run.returncode:
        raise PluginError(
            f"{GALLERY_SCRIPT} failed (exit status {run.returncode}), so the gallery page "
            f"cannot be built. Its output:\n{run.stdout}{run.stderr}"
        )


def _read_pngs(folder, origin):
    """``{file name: bytes}`` of the PNGs in ``folder``; PluginError if there are none."""
    pngs = {path.name: path.read_bytes() for path in sorted(folder.glob("*.png"))}
    if not pngs:
        raise PluginError(
            f"No PNG found in {folder} ({origin}): expected the pictures that "
            f"scripts/gallery.py draws. Run `python scripts/gallery.py {folder}`, or unset "
            f"{GALLERY_DIR_ENV} to draw them during the build."
        )
    return pngs
