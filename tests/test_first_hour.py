"""The first hour of a new user (issue 18): an instant start, a fast failure without
network, and work that shows its progress where a person watches and stays quiet
elsewhere.

Where "a person watches" matters, the code runs in a fresh process whose standard error
is a pseudo-terminal, as in a shell; pytest's own capture is not a terminal.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import threading

import huggingface_hub.constants
import numpy as np
import pytest
import timm.data
import torch
from _finetune_fixtures import colour_images, tiny
from conftest import REPO_ROOT, save_checkpoint, save_images, tiny_extractor

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor, PretrainedWeightsError
from sktransfer._cli import main
from sktransfer._options import PREPROCESSING_PRESETS

HEAVY = ("torch", "timm", "skorch", "sklearn", "numpy", "pytorch_grad_cam")
ANSI = re.compile(r"\x1b\[")
EPOCH = re.compile(r"^epoch (\d+)/(\d+) (\w+): ", re.MULTILINE)


def run_python(args, *, terminal: bool, timeout=300):
    """Run ``python args`` from the repository root, offline and on the CPU; its standard
    error is a pseudo-terminal when ``terminal``, a pipe otherwise. Returns (status,
    stdout, stderr)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    if not terminal:
        done = subprocess.run(
            [sys.executable, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        return done.returncode, done.stdout, done.stderr
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24x100
    received = []
    reader = threading.Thread(target=_drain, args=(parent, received), daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            [sys.executable, *args], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
            stderr=child, text=True, timeout=timeout,
        )  # fmt: skip
    finally:
        os.close(child)
        reader.join(timeout=10)
        os.close(parent)
    return done.returncode, done.stdout, b"".join(received).decode(errors="replace")


def _drain(fd, received):
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end closed
            return
        if not chunk:
            return
        received.append(chunk)


def imported_modules(stderr: str) -> set[str]:
    """The top-level modules that ``python -X importtime`` reports as imported."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


# ------------------------------------------------------------------------ an instant start


class TestInstantStart:
    @pytest.mark.parametrize(
        ("command", "shown"),
        [(["--help"], "sktransfer embed"), (["explain", "--help"], "usage: sktransfer explain ")],
        ids=["sktransfer", "explain"],
    )
    def test_help_imports_no_torch(self, command, shown):
        status, out, err = run_python(
            ["-X", "importtime", "-m", "sktransfer", *command], terminal=False
        )
        assert status == 0 and shown in out
        assert "sktransfer" in imported_modules(err)
        assert not imported_modules(err) & set(HEAVY)

    def test_a_mistyped_option_is_answered_without_torch(self):
        status, _, err = run_python(
            ["-X", "importtime", "-m", "sktransfer", "embed", "images", "--out", "x.npy",
             "--batch-size", "many"],
            terminal=False,
        )  # fmt: skip
        assert status == 2
        assert "--batch-size: expected an integer >= 1, got 'many'" in err
        assert not imported_modules(err) & set(HEAVY)

    def test_import_sktransfer_is_cheap_until_an_estimator_is_used(self):
        code = (
            "import sys, sktransfer\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
            "sktransfer.PretrainedFeatureExtractor\n"
            "print('torch' in sys.modules)\n"
        )
        status, out, err = run_python(["-c", code], terminal=False)
        assert status == 0, err
        assert out.splitlines() == ["[]", "True"]

    def test_the_presets_known_before_torch_are_timms_constants(self):
        assert PREPROCESSING_PRESETS == {
            "imagenet": {
                "mean": timm.data.IMAGENET_DEFAULT_MEAN,
                "std": timm.data.IMAGENET_DEFAULT_STD,
            },
            "inception": {
                "mean": timm.data.IMAGENET_INCEPTION_MEAN,
                "std": timm.data.IMAGENET_INCEPTION_STD,
            },
            "clip": {"mean": timm.data.OPENAI_CLIP_MEAN, "std": timm.data.OPENAI_CLIP_STD},
        }

    def test_public_names_resolve_and_are_listed(self):
        import sktransfer

        for name in sktransfer.__all__:
            assert getattr(sktransfer, name) is not None
            assert name in dir(sktransfer)
        with pytest.raises(AttributeError, match="has no attribute 'FineTunedClassifer'"):
            sktransfer.FineTunedClassifer  # noqa: B018


# ---------------------------------------------------------------------- no network


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """The hub at an address where nothing listens, an empty local cache, not offline."""
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    return cache


class TestNoNetwork:
    WAYS_OUT = (
        r"(?s)Could not load the pretrained weights of 'test_efficientnet\.r160_in1k': the "
        r"Hugging Face hub cannot be reached \(127\.0\.0\.1:\d+: .*\) and they are not in the "
        r"local Hugging Face cache .*HF_HUB_OFFLINE=1.*weights='path/to/file\.pth' and the "
        r"preprocessing it was trained with.*weights=None"
    )

    def test_fit_fails_at_once_naming_the_ways_out(self, unreachable_hub, caplog):
        extractor = PretrainedFeatureExtractor("test_efficientnet.r160_in1k")
        with pytest.raises(PretrainedWeightsError, match=self.WAYS_OUT):
            extractor.fit()
        # huggingface_hub logs each of its retries ("Retrying in 1s [Retry 1/5]")
        assert not [r for r in caplog.records if "Retry" in r.getMessage()]
        assert not hasattr(extractor, "backbone_")

    def test_weights_in_the_local_cache_load_without_the_hub(self, unreachable_hub, caplog):
        commit = "0123456789abcdef0123456789abcdef01234567"
        repo = unreachable_hub / "models--timm--test_efficientnet.r160_in1k"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True)
        state = save_checkpoint(repo / "snapshots" / commit / "model.safetensors", seed=3)
        extractor = PretrainedFeatureExtractor("test_efficientnet.r160_in1k").fit()
        for name, tensor in extractor.backbone_.state_dict().items():
            assert torch.equal(tensor, state[name]), name
        assert not [r for r in caplog.records if "Retry" in r.getMessage()]

    def test_the_offline_switch_is_restored(self, unreachable_hub):
        with pytest.raises(PretrainedWeightsError):
            PretrainedFeatureExtractor("test_efficientnet.r160_in1k").fit()
        assert huggingface_hub.constants.HF_HUB_OFFLINE is False

    def test_the_command_line_prints_one_error_line(self, unreachable_hub, tmp_path, capsys):
        save_images(colour_images(np.array([0])), tmp_path / "images")
        status = main(
            ["embed", str(tmp_path / "images"), "--model", "test_efficientnet.r160_in1k",
             "--out", str(tmp_path / "out.npy"), "--no-progress"]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert status == 1
        assert err.count("\n") == 1 and err.startswith("sktransfer: error: Could not load")
        assert "Traceback" not in err and not (tmp_path / "out.npy").exists()


# --------------------------------------------------------------- work you can watch


def epoch_lines(text: str) -> list[tuple[int, int, str]]:
    """(number, total, stage) of each epoch's line; a bar's redraws end with a carriage
    return, so each one starts a line here."""
    found = EPOCH.findall(text.replace("\r", "\n"))
    return [(int(n), int(total), stage) for n, total, stage in found]


class TestProgress:
    def test_epochs_are_numbered_across_stages_as_in_history(self, capfd):
        y = np.arange(24) % 2
        clf = tiny(freeze_depth=0.5, head_epochs=2, max_epochs=4, verbose=1)
        clf.fit(colour_images(y), y)
        err = capfd.readouterr().err
        history = [(r["epoch"], len(clf.history_), r["stage"]) for r in clf.history_]
        assert epoch_lines(err) == history
        assert [stage for *_, stage in history] == ["head"] * 2 + ["finetune"] * 4
        assert not ANSI.search(err)

    def test_bars_count_images_not_batches(self, capfd):
        y = np.arange(20) % 2
        tiny(freeze_depth=0.5, head_epochs=1, max_epochs=2, batch_size=8, verbose=1).fit(
            colour_images(y), y
        )
        err = capfd.readouterr().err  # each bar draws itself at 0 at least
        assert "decode, frozen layers:   0%|          | 0/20 [" in err
        for epoch in ("1/3", "2/3", "3/3"):
            assert f"epoch {epoch}:   0%|          | 0/20 [" in err
        assert "image/s" in err and "it/s" not in err

    def test_the_extractor_bar_counts_images(self, capfd):
        images = colour_images(np.arange(10) % 2)
        tiny_extractor(batch_size=4, verbose=True).fit().transform(images)
        err = capfd.readouterr().err
        assert "embedding:   0%|          | 0/10 [" in err and "image/s" in err

    def test_verbose_zero_shows_nothing(self, capfd):
        y = np.arange(16) % 2
        tiny(verbose=0).fit(colour_images(y), y).predict(colour_images(y))
        assert capfd.readouterr().err == ""

    def test_verbose_accepts_auto_and_refuses_other_strings(self):
        assert FineTunedClassifier().verbose == "auto"
        with pytest.raises(ValueError, match=r"'verbose' parameter .*'auto', a bool or an int"):
            tiny(verbose="loud").fit(colour_images(np.arange(4) % 2), np.arange(4) % 2)


WATCHED_FIT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from joblib import Parallel, delayed
    from sktransfer._progress import watching
    sys.path.insert(0, "tests")
    from _finetune_fixtures import colour_images, tiny

    y = np.arange(16) % 2
    tiny(head_epochs=1, max_epochs=2, freeze_depth=0.5).fit(colour_images(y), y)  # "auto"
    print(json.dumps({
        "main": watching(),
        "processes": Parallel(n_jobs=2)(delayed(watching)() for _ in range(2)),
        "threads": Parallel(n_jobs=2, prefer="threads")(delayed(watching)() for _ in range(2)),
    }))
    """
)


class TestWhereAPersonWatches:
    def test_a_terminal_sees_the_fit_and_workers_stay_quiet(self):
        status, out, err = run_python(["-c", WATCHED_FIT], terminal=True)
        assert status == 0, err
        assert epoch_lines(err) == [(1, 3, "head"), (2, 3, "finetune"), (3, 3, "finetune")]
        assert "decode, frozen layers" in err
        # joblib's worker processes inherit the terminal; they and threads stay quiet
        assert json.loads(out) == {"main": True, "processes": [False, False], "threads": [False, False]}  # fmt: skip

    def test_the_command_line_shows_one_bar_for_the_job(self, tmp_path):
        save_images(colour_images(np.arange(4) % 2), tmp_path)
        command = [
            "-m", "sktransfer", "embed", str(tmp_path), "--model", "test_efficientnet",
            "--weights", "none", "--image-size", "32", "--chunk-size", "2",
            "--out", str(tmp_path / "e.npy"),
        ]  # fmt: skip
        status, _, err = run_python(command, terminal=True)
        assert status == 0, err
        # the job's bar counts the 4 images; the extractor's own (2 a chunk) stays quiet
        assert "0/4 [" in err and "0/2 [" not in err
        status, _, err = run_python([*command, "--no-progress"], terminal=True)
        assert status == 0 and "image/s" not in err

    def test_a_log_gets_nothing(self):
        status, out, err = run_python(["-c", WATCHED_FIT], terminal=False)
        assert status == 0, err
        assert epoch_lines(err) == [] and "image/s" not in err
        assert json.loads(out)["main"] is False
