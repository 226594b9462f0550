"""The timm layer: model names, weights loading (files and the hub cache), preprocessing,
block groups and the split forward pass."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import timm
import torch
from conftest import save_checkpoint
from safetensors.torch import save_file

from sktransfer import PretrainedFeatureExtractor, UnstatedPreprocessingWarning, _backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_same_tensors(actual: dict, expected: dict):
    assert list(actual) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def assert_loaded_from(model, expected: dict):
    """The model's tensors equal ``expected``'s, matched by order (names may differ)."""
    own = model.state_dict()
    assert len(own) == len(expected)
    for (name, mine), theirs in zip(own.items(), expected.values(), strict=True):
        assert torch.equal(mine, theirs), name


@pytest.fixture(scope="module")
def reference_state(tmp_path_factory):
    """A seeded random test_efficientnet state dict, different from any fresh init."""
    return save_checkpoint(
        tmp_path_factory.mktemp("ref") / "ref.pth", "test_efficientnet", seed=123
    )


class TestModelName:
    @pytest.mark.parametrize(
        ("typo", "suggestion"),
        [
            ("test_efficientnett", "'test_efficientnet'"),
            ("efficientnet_b00", "'efficientnet_b0'"),
            ("resnet5O.a1_in1k", "'resnet50.a1_in1k'"),
        ],
    )
    def test_unknown_name_suggests_close_names(self, typo, suggestion):
        with pytest.raises(
            ValueError,
            match=rf"model='{typo}' is not a timm model name\. Did you mean one of \[.*{suggestion}",
        ):
            _backbone.create_backbone(typo, weights=None)

    def test_unknown_name_without_close_match(self):
        with pytest.raises(ValueError, match=r"not a timm model name\. See timm\.list_models\(\)"):
            _backbone.check_model_name("zzzzqqqq")

    def test_extractor_reports_it_at_fit(self):
        extractor = PretrainedFeatureExtractor("test_efficientnett", weights=None)
        with pytest.raises(ValueError, match="Did you mean"):
            extractor.fit()

    @pytest.mark.parametrize(
        "name", ["test_efficientnet", "test_efficientnet.r160_in1k", "hf-hub:timm/anything"]
    )
    def test_valid_names_pass(self, name):
        _backbone.check_model_name(name)


class TestWeightsFile:
    @pytest.mark.parametrize(
        ("filename", "wrap"),
        [
            ("bare.pth", lambda sd: sd),
            ("nested.pt", lambda sd: {"state_dict": sd, "epoch": 3}),
            ("nested.ckpt", lambda sd: {"model": sd, "optimizer": {}}),
            ("dataparallel.bin", lambda sd: {f"module.{k}": v for k, v in sd.items()}),
        ],
    )
    def test_torch_checkpoints_load_exactly(self, tmp_path, reference_state, filename, wrap):
        path = tmp_path / filename
        torch.save(wrap(reference_state), path)
        model = _backbone.create_backbone("test_efficientnet", weights=path)
        assert_same_tensors(model.state_dict(), reference_state)
        assert not model.training

    def test_safetensors_loads_exactly(self, tmp_path, reference_state):
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in reference_state.items()}, str(path))
        model = _backbone.create_backbone("test_efficientnet", weights=str(path))
        assert_same_tensors(model.state_dict(), reference_state)

    def test_weights_none_is_not_the_checkpoint(self, reference_state):
        model = _backbone.create_backbone("test_efficientnet", weights=None)
        own = model.state_dict()
        assert not torch.equal(own["conv_stem.weight"], reference_state["conv_stem.weight"])

    def test_renamed_keys_load_by_order(self, tmp_path, reference_state):
        path = tmp_path / "ported.pth"
        torch.save({f"tensor_{i:03d}": v for i, v in enumerate(reference_state.values())}, path)
        with pytest.warns(UnstatedPreprocessingWarning, match="by tensor order"):
            model = _backbone.create_backbone("test_efficientnet", weights=path)
        assert_same_tensors(model.state_dict(), reference_state)

    def test_wrong_architecture_fails_loudly(self, tmp_path):
        path = tmp_path / "resnet.pth"
        save_checkpoint(path, "test_resnet")
        n_own = len(timm.create_model("test_efficientnet").state_dict())
        with pytest.raises(
            ValueError,
            match=rf"model has {n_own} tensors .* match by name and shape, and the first \d+ match by order",
        ):
            _backbone.create_backbone("test_efficientnet", weights=path)

    def test_partial_checkpoint_fails_loudly(self, tmp_path, reference_state):
        path = tmp_path / "partial.pth"
        partial = dict(list(reference_state.items())[:-5])
        torch.save(partial, path)
        n = len(partial)
        with pytest.raises(
            ValueError, match=rf"The checkpoint .*partial.pth.* the weights {n}; {n} match by name"
        ):
            _backbone.create_backbone("test_efficientnet", weights=path)

    def test_fine_tuned_head_resizes_the_classifier(self, tmp_path):
        path = tmp_path / "finetuned.pth"
        state = save_checkpoint(path, "test_efficientnet", seed=7, num_classes=10)
        model = _backbone.create_backbone("test_efficientnet", weights=path)
        assert model.get_classifier().out_features == 10
        assert_same_tensors(model.state_dict(), state)
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)

    def test_fine_tuned_head_through_the_extractor(self, tmp_path):
        path = tmp_path / "finetuned.pth"
        save_checkpoint(path, "test_efficientnet", seed=7, num_classes=10)
        extractor = PretrainedFeatureExtractor(
            "test_efficientnet", weights=path, layer="logits", image_size=32
        ).fit()
        assert extractor.n_features_out_ == 10

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"weights='.*nope\.pth' is not a file"):
            _backbone.create_backbone("test_efficientnet", weights=tmp_path / "nope.pth")

    def test_unreadable_file(self, tmp_path):
        path = tmp_path / "garbage.pth"
        path.write_bytes(b"definitely not a checkpoint")
        with pytest.raises(
            ValueError, match=r"garbage\.pth' is not a PyTorch checkpoint, or it is damaged"
        ):
            _backbone.create_backbone("test_efficientnet", weights=path)

    @pytest.mark.parametrize(
        "content", [{}, {"state_dict": {}}, [1, 2]], ids=["empty", "empty-nested", "list"]
    )
    def test_file_without_state_dict(self, tmp_path, content):
        path = tmp_path / "empty.pth"
        torch.save(content, path)
        with pytest.raises(ValueError, match="holds no state dict"):
            _backbone.create_backbone("test_efficientnet", weights=path)

    def test_weights_change_the_fingerprint(self, tmp_path, reference_state):
        path = tmp_path / "a.pth"
        torch.save(reference_state, path)
        a = _backbone.create_backbone("test_efficientnet", weights=path)
        b = _backbone.create_backbone("test_efficientnet", weights=path)
        assert _backbone.weights_fingerprint(a) == _backbone.weights_fingerprint(b)
        with torch.no_grad():
            b.conv_stem.weight[0, 0, 0, 0] += 1e-3
        assert _backbone.weights_fingerprint(a) != _backbone.weights_fingerprint(b)


class TestPackagedLite0:
    def test_loads_by_order_and_equals_the_file(self, lite0_weights):
        file_state = torch.load(lite0_weights, map_location="cpu", weights_only=True)
        with pytest.warns(UnstatedPreprocessingWarning):
            model = _backbone.create_backbone("tf_efficientnet_lite0", weights=lite0_weights)
        assert set(file_state).isdisjoint(model.state_dict())  # names differ: loaded by order
        assert_loaded_from(model, file_state)

    def test_data_config(self):
        model = timm.create_model("tf_efficientnet_lite0")
        cfg = _backbone.data_config(model, image_size=96)
        assert cfg["input_size"] == (3, 96, 96)
        assert cfg["mean"] == pytest.approx((0.5, 0.5, 0.5))
        assert cfg["std"] == pytest.approx((0.5, 0.5, 0.5))
        assert _backbone.data_config(model, image_size=(80, 112))["input_size"] == (3, 80, 112)
        assert _backbone.data_config(model)["input_size"] == (3, 224, 224)

    @pytest.mark.parametrize("bad", [(96,), (96, 0), (96, 96, 96), (96.0, 96)])
    def test_data_config_rejects_bad_sizes(self, bad):
        with pytest.raises(ValueError, match=r"image_size=.* is not valid"):
            _backbone.data_config(timm.create_model("test_efficientnet"), image_size=bad)


class TestHubCache:
    """``weights="pretrained"`` through a local Hugging Face cache, fully offline."""

    REPO = "models--timm--test_efficientnet.r160_in1k"
    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    @pytest.fixture
    def hub_cache(self, tmp_path, monkeypatch):
        cache = tmp_path / "hf-cache"
        cache.mkdir()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        # huggingface_hub reads both at import time; hf_hub_download reads the constants.
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        return cache

    def populate(self, cache, seed=11):
        repo = cache / self.REPO
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(self.COMMIT)
        snapshot = repo / "snapshots" / self.COMMIT
        snapshot.mkdir(parents=True)
        return save_checkpoint(snapshot / "model.safetensors", "test_efficientnet", seed=seed)

    @pytest.mark.parametrize("name", ["test_efficientnet.r160_in1k", "test_efficientnet"])
    def test_pretrained_loads_the_cached_file(self, hub_cache, name):
        state = self.populate(hub_cache)
        extractor = PretrainedFeatureExtractor(name, weights="pretrained", image_size=32).fit()
        assert_same_tensors(extractor.backbone_.state_dict(), state)

    def test_empty_cache_offline_explains_what_to_do(self, hub_cache):
        extractor = PretrainedFeatureExtractor("test_efficientnet.r160_in1k", weights="pretrained")
        with pytest.raises(
            RuntimeError,
            match=r"(?s)Could not load the pretrained weights of 'test_efficientnet\.r160_in1k'.*HF_HUB_OFFLINE=1.*weights='path/to/file\.pth'.*weights=None",
        ):
            extractor.fit()


SPLIT_MODELS = ["test_efficientnet", "test_resnet", "test_convnext", "test_vit"]
SPLIT_INPUT = (3, 32, 32)


@pytest.fixture(scope="module", params=SPLIT_MODELS)
def eval_model(request, one_torch_thread):
    kwargs = {"img_size": SPLIT_INPUT[1:]} if request.param == "test_vit" else {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model(request.param, **kwargs).eval()
    return request.param, model


class TestBlockGroups:
    @pytest.mark.parametrize(
        "name", ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"]
    )
    def test_groups_cover_the_backbone_in_order(self, name):
        model = timm.create_model(name)
        groups = _backbone.block_groups(model)
        head = set(_backbone.classifier_names(model))
        classifier = {id(p) for p in model.get_classifier().parameters()}
        assert head == {n for n, p in model.named_parameters() if id(p) in classifier}
        body = [n for n, _ in model.named_parameters() if n not in head]
        assert len(groups) >= 3 and all(groups)
        flat = [n for group in groups for n in group]
        # Every non-classifier parameter exactly once, groups from the input up.
        assert flat == body
        assert head and head.isdisjoint(flat)

    def test_resnet_groups_are_stem_then_stages(self):
        groups = _backbone.block_groups(timm.create_model("test_resnet"))
        firsts = [g[0].split(".")[0] for g in groups]
        assert firsts == ["conv1", "layer1", "layer2", "layer3", "layer4"]


class TestSplitForward:
    def test_top_of_bottom_is_the_model(self, eval_model):
        name, model = eval_model
        input_size = SPLIT_INPUT
        x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(1))
        groups = _backbone.block_groups(model)
        with torch.inference_mode():
            expected = model(x)
            cuts = []
            for k in (1, 2, len(groups) - 1, len(groups)):
                frozen = {n for group in groups[:k] for n in group}
                split = _backbone.split_forward(model, frozen, input_size, head_only=False)
                assert isinstance(split, _backbone.SplitForward), (name, k)
                cuts.append(split.cut)
                torch.testing.assert_close(
                    split.top(split.bottom(x)), expected, rtol=1e-4, atol=1e-5
                )
            split = _backbone.split_forward(model, set(), input_size, head_only=True)
            features = split.bottom(x)
            assert features.shape == (2, model.num_features)
            torch.testing.assert_close(split.top(features), expected, rtol=1e-4, atol=1e-5)
        assert cuts == sorted(cuts) and cuts[0] >= 1
        assert not model.training

    def test_nothing_frozen_is_the_whole_model(self, eval_model):
        _, model = eval_model
        split = _backbone.split_forward(model, set(), SPLIT_INPUT, head_only=False)
        assert isinstance(split, _backbone.WholeModel)
        x = torch.randn(2, *SPLIT_INPUT, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            assert torch.equal(split.bottom(x), x)
            torch.testing.assert_close(split.top(split.bottom(x)), model(x))

    def test_keeps_the_training_mode(self):
        model = timm.create_model("test_resnet").train()
        groups = _backbone.block_groups(model)
        _backbone.split_forward(model, set(groups[0]), SPLIT_INPUT, head_only=False)
        assert model.training


@pytest.mark.parametrize(
    "model, expected",
    [("test_efficientnet", True), ("test_resnet", True), ("test_vit", False)],
)
def test_channels_last_for_convolutional_nets_only(model, expected):
    assert _backbone.prefers_channels_last(timm.create_model(model)) is expected
