"""MLP-Mixer and MLP baseline: shapes, parameter counts, initialisers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hpsearch.errors import ConfigError
from hpsearch.params import TrialParams
from hpsearch.trainer.model import (
    MLP,
    Dropout,
    MLPMixer,
    build_model,
    count_parameters,
    init_weights,
    matmul_flops_per_image,
    training_matmuls,
)
from hpsearch.trainer.model_file import load_model_file, save_model_file

IMAGE = (1, 28, 28)
PATCHES_DIVIDING_28 = (1, 2, 4, 7, 14, 28)


def mixer_count_by_hand(c: int, h: int, w: int, p: int, d: int, t: int, ch: int, blocks: int,
                        classes: int = 10) -> int:
    """Written out from the architecture, independently of the code: weights + biases."""
    n = (h // p) * (w // p)  # patches
    stem = (c * p * p) * d + d
    layer_norm = 2 * d  # weight and bias
    token_mlp = (n * t + t) + (t * n + n)
    channel_mlp = (d * ch + ch) + (ch * d + d)
    block = 2 * layer_norm + token_mlp + channel_mlp
    head = layer_norm + d * classes + classes
    return stem + blocks * block + head


@pytest.mark.parametrize("patch", PATCHES_DIVIDING_28)
def test_mixer_output_shape_and_parameter_count(patch: int) -> None:
    params = TrialParams(patch_size=patch, hidden_dim=24, token_mlp_dim=12, channel_mlp_dim=40,
                         num_blocks=2)
    model = build_model(params, IMAGE)
    logits = model(torch.randn(3, *IMAGE))
    assert logits.shape == (3, 10)
    assert logits.dtype == torch.float32
    assert count_parameters(model) == mixer_count_by_hand(1, 28, 28, patch, 24, 12, 40, 2)


def test_default_mixer_parameter_count() -> None:
    """The coursework configuration (patch 4, 128/64/512, one block), numbers written out."""
    model = build_model(TrialParams(), IMAGE)
    # stem 16*128+128; block: 2 LN (512) + token (49*64+64+64*49+49) + channel (128*512+512
    # +512*128+128); final LN 256; head 128*10+10
    expected = 2176 + (512 + 6385 + 131712) + 256 + 1290
    assert count_parameters(model) == expected == 142331


def test_mixer_parameter_count_colour_images_and_blocks() -> None:
    for blocks in (1, 3):
        model = MLPMixer(image_shape=(3, 32, 32), patch_size=8, hidden_dim=16, token_mlp_dim=8,
                         channel_mlp_dim=32, num_blocks=blocks, act_layer=nn.ReLU)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert count_parameters(model) == mixer_count_by_hand(3, 32, 32, 8, 16, 8, 32, blocks)


def test_patchify_is_row_major_and_lossless() -> None:
    model = MLPMixer(image_shape=IMAGE, patch_size=7, hidden_dim=8, token_mlp_dim=4,
                     channel_mlp_dim=8)
    images = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28)
    patches = model.patchify(images)
    assert patches.shape == (1, 16, 49)
    # second patch: rows 0-6, columns 7-13
    assert torch.equal(patches[0, 1], images[0, 0, :7, 7:14].reshape(-1))
    # fifth patch starts the second row of patches
    assert torch.equal(patches[0, 4], images[0, 0, 7:14, :7].reshape(-1))


def test_constructors_take_keywords_only() -> None:
    # positional widths are how token_mlp_dim and channel_mlp_dim could be swapped unnoticed
    with pytest.raises(TypeError):
        MLPMixer(IMAGE, 7, 8, 4, 8)  # type: ignore[misc]
    with pytest.raises(TypeError):
        MLP(IMAGE, 8)  # type: ignore[misc]


def test_forward_is_features_then_head() -> None:
    torch.manual_seed(0)
    model = MLPMixer(image_shape=IMAGE, patch_size=7, hidden_dim=8, token_mlp_dim=4,
                     channel_mlp_dim=8).eval()
    images = torch.randn(2, *IMAGE)
    features = model.forward_features(images)
    assert features.shape == (2, 16, 8)  # 16 patches of width 8
    assert torch.equal(model.forward_head(features), model(images))


@pytest.mark.parametrize("patch", (3, 5, 6, 8, 9, 29))
def test_patch_size_not_dividing_the_image_is_an_error(patch: int) -> None:
    with pytest.raises(ConfigError, match="does not divide"):  # one check, one error type
        build_model(TrialParams(patch_size=patch), IMAGE)
    with pytest.raises(ConfigError, match="does not divide"):
        TrialParams(patch_size=patch).check_image("fashion-mnist")


def test_a_patch_size_for_non_square_images_is_advised_by_both_sides() -> None:
    """12x20 images: 8 divides neither side well; the advice was "a divisor of 12" (6 and 12
    do not divide 20)."""
    with pytest.raises(ConfigError, match=r"does not divide the 12x20 images; choose a "
                                          r"divisor of 4 \(it must divide 12 and 20\)$"):
        build_model(TrialParams(patch_size=8), (3, 12, 20))
    with pytest.raises(ConfigError, match=r"does not divide the 28x28 images; choose a "
                                          r"divisor of 28$"):
        build_model(TrialParams(patch_size=8), (1, 28, 28))


@pytest.mark.parametrize(("width", "layers"), [(32, 1), (16, 3)])
def test_mlp_baseline_shapes_and_count(width: int, layers: int) -> None:
    model = build_model(TrialParams(model="mlp", mlp_width=width, mlp_layers=layers), IMAGE)
    assert isinstance(model, MLP)
    assert model(torch.randn(5, *IMAGE)).shape == (5, 10)
    expected = (784 * width + width) + (layers - 1) * (width * width + width) + width * 10 + 10
    assert count_parameters(model) == expected


def test_mlp_baseline_ignores_patch_size() -> None:
    model = build_model(TrialParams(model="mlp", patch_size=5, mlp_width=8), IMAGE)
    assert model(torch.randn(2, *IMAGE)).shape == (2, 10)


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _norms(model: nn.Module) -> list[nn.LayerNorm]:
    return [m for m in model.modules() if isinstance(m, nn.LayerNorm)]


def _built(init: str, seed: int = 0, **changes: object) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(TrialParams(init=init, num_blocks=2, **changes), IMAGE)


@pytest.mark.parametrize("init", ["xavier_uniform", "kaiming_uniform", "normal"])
def test_initialisers_change_weights_zero_biases_and_leave_layer_norm(init: str) -> None:
    default, model = _built("default"), _built(init)
    for before, after in zip(_linears(default), _linears(model), strict=True):
        assert not torch.equal(before.weight, after.weight)
        assert torch.count_nonzero(after.bias) == 0
    for norm in _norms(model):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_xavier_uniform_bounds() -> None:
    for layer in _linears(_built("xavier_uniform")):
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= bound
        if w.numel() >= 1000:  # a uniform sample of this size reaches close to its bounds
            assert w.abs().max() > 0.95 * bound
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_kaiming_uniform_bounds() -> None:
    for layer in _linears(_built("kaiming_uniform")):
        fan_in = layer.weight.shape[1]
        bound = math.sqrt(2.0) * math.sqrt(3.0 / fan_in)  # gain(relu) * sqrt(3 / fan_in)
        w = layer.weight.detach()
        assert w.abs().max() <= bound
        if w.numel() >= 1000:
            assert w.abs().max() > 0.95 * bound


def test_normal_init_std() -> None:
    model = _built("normal")
    all_weights = torch.cat([layer.weight.detach().flatten() for layer in _linears(model)])
    assert all_weights.std().item() == pytest.approx(0.02, rel=0.03)
    assert abs(all_weights.mean().item()) < 0.001
    big = max(_linears(model), key=lambda layer: layer.weight.numel())
    assert big.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_default_init_is_pytorchs_own() -> None:
    model = _built("default")
    torch.manual_seed(0)
    plain = MLPMixer(image_shape=IMAGE, patch_size=4, hidden_dim=128, token_mlp_dim=64,
                     channel_mlp_dim=512, num_blocks=2)
    for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert all(torch.count_nonzero(layer.bias) > 0 for layer in _linears(model))


def test_initialisers_apply_to_mlp_baseline() -> None:
    model = _built("normal", model="mlp", mlp_width=64, mlp_layers=2)
    for layer in _linears(model):
        assert torch.count_nonzero(layer.bias) == 0
        assert layer.weight.abs().max() < 0.2  # std 0.02, not the default U(±1/sqrt(fan_in))


def test_unknown_initialiser_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown initialiser"):
        init_weights(nn.Linear(2, 2), "orthogonal")


def test_dropout_and_activation_are_used() -> None:
    model = build_model(TrialParams(dropout=0.5, activation="relu"), IMAGE)
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    assert not any(isinstance(m, nn.GELU) for m in model.modules())
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
    assert dropouts and all(m.p == 0.5 for m in dropouts)
    x = torch.randn(4, *IMAGE)
    model.eval()
    assert torch.equal(model(x), model(x))  # no dropout in eval mode
    model.train()
    assert not torch.equal(model(x), model(x))


def test_matmul_flops_per_image_matches_hand_count() -> None:
    params = TrialParams()  # patch 4: 49 patches of 16 pixels, d 128, token 64, channel 512
    stem = 2 * 49 * 16 * 128
    token = 2 * (128 * 49 * 64 + 128 * 64 * 49)
    channel = 2 * (49 * 128 * 512 + 49 * 512 * 128)
    head = 2 * 128 * 10
    assert matmul_flops_per_image(params, IMAGE) == stem + token + channel + head
    mlp = TrialParams(model="mlp", mlp_width=100, mlp_layers=2)
    assert matmul_flops_per_image(mlp, IMAGE) == 2 * (784 * 100 + 100 * 100 + 100 * 10)


def test_training_matmuls_are_forward_and_both_gradients_but_the_images() -> None:
    params = TrialParams(num_blocks=2)
    shapes = training_matmuls(params, IMAGE, batch=8)
    linears = 1 + 4 * 2 + 1  # stem, two token and two channel linears per block, head
    assert len(shapes) == 3 * linears - 1  # no input gradient for the images
    stem_input_grad = 2 * 49 * 16 * 128
    flops = sum(2 * m * k * n for m, k, n in shapes)
    assert flops == 8 * (3 * matmul_flops_per_image(params, IMAGE) - stem_input_grad)
    assert (8 * 128, 49, 64) in shapes  # token mixing: one row per (image, channel)


def test_mixer_computes_the_textbook_transposed_token_mixing() -> None:
    """The blocks work patches-first; the result is the usual (batch, patches, dim) Mixer's."""
    torch.manual_seed(0)
    model = MLPMixer(image_shape=IMAGE, patch_size=7, hidden_dim=8, token_mlp_dim=4,
                     channel_mlp_dim=8, num_blocks=2).eval()
    images = torch.randn(3, *IMAGE)
    x = model.stem(model.patchify(images))  # (batch, patches, dim)
    for blk in model.blocks:
        x = x + blk.token_mlp(blk.token_norm(x).transpose(1, 2)).transpose(1, 2)
        x = x + blk.channel_mlp(blk.channel_norm(x))
    expected = model.head(model.norm(x).mean(dim=1))
    assert torch.allclose(model(images), expected, atol=1e-6)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_drops_a_share_p_and_scales_the_rest(p: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = Dropout(p).train()
    out = layer(torch.ones(1000, 1001, dtype=dtype))  # numel not a multiple of 4
    assert out.dtype == dtype and out.shape == (1000, 1001)
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - p) < 0.003  # ~1M samples: a few standard errors
    kept = out[out != 0]
    assert torch.allclose(kept.float(), torch.full_like(kept.float(), 1 / (1 - layer.p)),
                          rtol=1e-2)
    assert abs(out.double().mean().item() - 1.0) < 0.01  # unbiased: the expectation is kept


def test_dropout_rounds_p_to_sixteen_bits_and_rejects_impossible_values() -> None:
    assert Dropout(0.1).p == round(0.1 * 65536) / 65536
    assert abs(Dropout(0.1).p - 0.1) < 1e-5
    for bad in (-0.1, 1.0, 1.5, 0.999996):  # the last rounds to p = 1
        with pytest.raises(ValueError, match="dropout"):
            Dropout(bad)


def test_dropout_is_the_identity_in_eval_mode_or_at_zero() -> None:
    x = torch.randn(8, 16)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_dropout_masks_follow_the_seed_and_differ_between_calls() -> None:
    layer = Dropout(0.5).train()
    x = torch.ones(64, 64)
    torch.manual_seed(3)
    first, second = layer(x), layer(x)
    torch.manual_seed(3)
    assert torch.equal(layer(x), first)
    assert not torch.equal(first, second)


def test_dropout_gradient_passes_only_through_kept_elements() -> None:
    torch.manual_seed(1)
    layer = Dropout(0.25).train()
    x = torch.randn(32, 33, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert x.grad is not None
    expected = (out != 0).float() / (1 - layer.p)
    assert torch.allclose(x.grad, expected)


def test_a_loaded_model_predicts_from_the_layouts_data_comes_in_and_refuses_others(
        tmp_path: Path) -> None:
    """A channels-last batch (a .npz file's, numpy's) failed deep inside the model with
    torch's `shape '[4, 8, 4, 0, 4]' is invalid`; float images were scaled by 1/255 a second
    time and predicted silently."""
    params = TrialParams(patch_size=4, hidden_dim=8, token_mlp_dim=4, channel_mlp_dim=8)
    shape = (3, 8, 12)
    save_model_file(tmp_path / "m.pt", build_model(params, shape, 5), params, shape, 5, 0.5, 0.25)
    loaded = load_model_file(tmp_path / "m.pt")
    nchw = torch.randint(0, 256, (4, *shape), dtype=torch.uint8)
    expected = loaded.predict(nchw)
    assert torch.equal(loaded.predict(nchw.permute(0, 2, 3, 1).numpy()), expected)
    for images, got in ((nchw.float() / 255, r"float32 \(4, 3, 8, 12\)"),
                        (nchw[..., :8], r"uint8 \(4, 3, 8, 8\)")):
        says = (r"^predict takes uint8 images \(N, 3, 8, 12\) or \(N, 8, 12, 3\), as the "
                rf"model trained on; got {got}$")
        with pytest.raises(ConfigError, match=says):
            loaded.predict(images)
