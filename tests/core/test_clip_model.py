"""core.models.clip: the open_clip factory, the local-dir layout and offline failures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from core.models.clip import (
    ClipLoadError,
    create_clip,
    list_clip_models,
    load_from_run,
    save_open_clip,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_clip("tiny-clip", None)


def _encode(model, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(images, tokens)


def test_tiny_clip_builds_offline_and_encodes(tiny) -> None:
    model, preprocess_train, preprocess_val, tokenizer = tiny
    assert "tiny-clip" in list_clip_models()
    tokens = tokenizer(["a red circle", "a blue square"])
    assert tokens.shape == (2, 32) and tokens.dtype == torch.long
    out = _encode(model, torch.randn(2, 3, 64, 64), tokens)
    assert set(out) >= {"image_features", "text_features", "logit_scale"}  # output_dict
    assert out["image_features"].shape == (2, 64) and out["text_features"].shape == (2, 64)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(2), atol=1e-5)
    from PIL import Image

    pixels = preprocess_val(Image.new("RGB", (96, 80), (200, 10, 10)))
    assert pixels.shape == (3, 64, 64)
    assert preprocess_train(Image.new("RGB", (96, 96))).shape == (3, 64, 64)


def test_local_dir_round_trip_is_identical(tiny, tmp_path: Path) -> None:
    import open_clip

    model = tiny[0]
    out_dir = save_open_clip(model, None, tmp_path / "open_clip")
    assert {p.name for p in out_dir.iterdir()} == {
        "open_clip_config.json",
        "open_clip_model.safetensors",
    }
    images, tokens = torch.randn(3, 3, 64, 64), tiny[3](["a", "b c", "d e f"])
    want = _encode(model, images, tokens)

    reloaded, _, preprocess = open_clip.create_model_and_transforms(
        "local-dir:" + str(out_dir), output_dict=True
    )
    got = _encode(reloaded, images, tokens)
    for key in ("image_features", "text_features", "logit_scale"):
        assert torch.equal(got[key], want[key]), key
    assert preprocess.transforms[0].size == 64
    assert open_clip.get_tokenizer("local-dir:" + str(out_dir))("x").shape == (1, 32)

    # the factory reads the same folder as arch or as pretrained, and from a run
    for bundle in (
        create_clip("local-dir:" + str(out_dir)),
        create_clip("ViT-B-32", "local-dir:" + str(out_dir)),
    ):
        assert torch.equal(
            _encode(bundle[0], images, tokens)["text_features"], want["text_features"]
        )
    run_bundle = load_from_run(tmp_path)
    assert torch.equal(
        _encode(run_bundle[0], images, tokens)["image_features"], want["image_features"]
    )


def test_state_dict_file_as_pretrained(tiny, tmp_path: Path) -> None:
    model = tiny[0]
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = create_clip("tiny-clip", str(path))[0]
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_hub_tag_offline_fails_fast_with_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ClipLoadError, match=r"ViT-B-32.*openai.*local-dir"):
        create_clip("ViT-B-32", "openai")
    assert time.perf_counter() - t0 < 5.0


def test_unknown_arch_and_pretrained_are_config_errors(tmp_path: Path) -> None:
    from lake.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown CLIP architecture"):
        create_clip("no-such-clip")
    with pytest.raises(ClipLoadError, match="neither a file"):
        create_clip("tiny-clip", "no-such-tag")
    with pytest.raises(ClipLoadError, match="no exported CLIP model"):
        load_from_run(tmp_path)
