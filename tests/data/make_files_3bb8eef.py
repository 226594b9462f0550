"""Make the model files of ``tests/data/files_3bb8eef/`` with sktransfer at commit 3bb8eef.

The files are fixed: ``tests/test_model_files_3bb8eef.py`` checks that the code of today
still loads them and predicts what 3bb8eef predicted (``expected.npz``). Run this script
against the OLD code, never the current one, from a separate checkout of that commit::

    git worktree add /tmp/old3bb8eef 3bb8eef
    cd /tmp/old3bb8eef
    HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/old3bb8eef python /path/to/make_files_3bb8eef.py OUT_DIR

(``PYTHONPATH`` must win over an editable install of the current checkout: the script
refuses to run if ``sktransfer`` is not imported from the current working directory.)

Models, all on timm's tiny random-weight ``test_efficientnet`` at 32 x 32, on the CPU,
fitted on synthetic uint8 images made here from a fixed seed:

- ``classifier``: a ``FineTunedClassifier`` on string labels;
- ``multitask``: a ``FineTunedClassifier`` on two columns of string labels;
- ``regressor``: a ``FineTunedRegressor`` on 1-D real targets;
- ``probe``: ``Pipeline(PretrainedFeatureExtractor, LogisticRegression)``.

Each is written with ``pickle.dump`` (``NAME.pkl``) and ``skops.io.dump`` (``NAME.skops``,
zip-deflated).
``expected.npz`` holds the check images (``X``) and each model's outputs on them.
"""

from __future__ import annotations


def main(out_dir):
    import os
    import pickle
    import zipfile
    from pathlib import Path

    import numpy as np
    import skops.io
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    import sktransfer
    from sktransfer import FineTunedClassifier, FineTunedRegressor, PretrainedFeatureExtractor

    here = Path(os.getcwd()).resolve()
    if Path(sktransfer.__file__).resolve().parents[1] != here:
        raise SystemExit(f"sktransfer imported from {sktransfer.__file__}, not from {here}")
    torch.set_num_threads(1)

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    X_check = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    animals = np.array(["cat", "dog", "owl"])[np.arange(24) % 3]
    sizes = np.array(["small", "large"])[np.arange(24) % 2]
    targets = rng.normal(10.0, 3.0, 24)

    tiny = dict(
        model="test_efficientnet",
        weights=None,
        image_size=32,
        max_epochs=1,
        head_epochs=1,
        batch_size=8,
        device="cpu",
        random_state=0,
    )
    models = {
        "classifier": FineTunedClassifier(**tiny).fit(X, animals),
        "multitask": FineTunedClassifier(**tiny).fit(X, np.column_stack([animals, sizes])),
        "regressor": FineTunedRegressor(**tiny).fit(X, targets),
        "probe": Pipeline(
            [
                (
                    "features",
                    PretrainedFeatureExtractor(
                        "test_efficientnet", weights=None, image_size=32, device="cpu"
                    ),
                ),
                ("clf", LogisticRegression(max_iter=1000)),
            ]
        ).fit(X, animals),
    }

    expected = {"X": X_check}
    for name, model in models.items():
        if hasattr(model, "predict_proba"):
            proba = model.predict_proba(X_check)
            if isinstance(proba, list):
                for i, p in enumerate(proba):
                    expected[f"{name}.predict_proba.{i}"] = p
            else:
                expected[f"{name}.predict_proba"] = proba
        pred = np.asarray(model.predict(X_check))
        expected[f"{name}.predict"] = pred.astype(str) if pred.dtype == object else pred

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        with open(out / f"{name}.pkl", "wb") as f:
            pickle.dump(model, f)
        skops.io.dump(model, out / f"{name}.skops", compression=zipfile.ZIP_DEFLATED)
    np.savez(out / "expected.npz", **expected)
    print(f"sktransfer {sktransfer.__version__} from {sktransfer.__file__}")
    for path in sorted(out.iterdir()):
        print(f"{path.stat().st_size:>9}  {path.name}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else "files_3bb8eef")
