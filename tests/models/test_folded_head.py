import pytest
import torch

from upseg.models import UpscalingHead, build
from upseg.models.folded_head import FIRST, INNER, FoldedHead, _low_rank, fold_head, fold_model


def _random_head(num_classes: int, num_stages: int, skip: bool, init: str) -> UpscalingHead:
    head = UpscalingHead(num_classes, num_stages, skip=skip, init=init).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))  # biases and weights away from their init
    return head


@pytest.mark.parametrize(
    ("num_classes", "num_stages", "skip", "init"),
    [
        (1, 1, False, "pytorch"),
        (4, 4, False, "pytorch"),
        (4, 4, True, "upsample"),
        (2, 3, True, "pytorch"),
        (3, 5, False, "upsample"),
        (2, 3, False, "bilinear"),
        (4, 4, True, "bilinear"),
    ],
)
@pytest.mark.parametrize("size", [(1, 1), (1, 4), (2, 2), (3, 5), (7, 2), (16, 16)])
def test_folded_head_equals_the_stages(num_classes, num_stages, skip, init, size) -> None:
    head = _random_head(num_classes, num_stages, skip, init)
    folded = fold_head(head)
    x = 3 * torch.randn(2, num_classes, *size)
    with torch.no_grad():
        expected, got = head(x)[-1], folded(x)
    assert len(got) == 2 and got[0] is x
    assert got[1].shape == expected.shape
    torch.testing.assert_close(got[1], expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (8, 8)])
def test_folded_bilinear_head_equals_it_untrained(skip: bool, size: tuple[int, int]) -> None:
    """Folding the head exactly as initialised: the zero-padded border of every stage (which
    makes the bilinear start differ from interpolate) is carried by the border regions."""
    head = UpscalingHead(2, 3, skip=skip, init="bilinear").eval()
    x = torch.randn(2, 2, *size)
    with torch.no_grad():
        expected, got = head(x)[-1], fold_head(head)(x)[1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_border_blocks_need_their_own_weights() -> None:
    """A single translation-invariant kernel would be wrong on the border blocks only."""
    head = _random_head(2, 3, False, "pytorch")
    folded = fold_head(head)
    inner, first = folded.weight[INNER, INNER], folded.weight[FIRST, INNER]
    assert (inner - first).abs().max() > 1e-3
    assert folded.weight.dtype == torch.float32 and not list(folded.parameters())


def test_fold_model_keeps_the_original_and_matches_it() -> None:
    model = build("elunet", 4, 4, 16, 256, head="skip").eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folded = fold_model(model)
    assert isinstance(folded.head, FoldedHead) and isinstance(model.head, UpscalingHead)
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    baseline = build("elunet", 4, 4, 16, None)
    assert fold_model(baseline).head is None


def test_heads_too_wide_to_fold_keep_their_stages(monkeypatch) -> None:
    import upseg.models.folded_head as folded_head

    monkeypatch.setattr(folded_head, "MAX_FOLDED_CHANNELS", 63)
    model = build("elunet", 1, 4, 16, 64, head="plain")  # 4 classes x 4^2 = 64 channels
    assert isinstance(fold_model(model).head, UpscalingHead)


def test_export_holds_the_folded_head_with_the_nine_regions_it_uses(tmp_path) -> None:
    import onnx

    from upseg.deploy.export import export_onnx

    model = build("elunet", 2, 3, 16, 64, head="plain", base_width=4)
    export_onnx(model, tmp_path / "m.onnx")  # checked against the stages inside
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    region_weights = [i.name for i in graph.initializer if i.name.startswith("head.weight_")]
    assert len(region_weights) == 9  # first / inner / last rows x columns; no single kinds
    ops = [n.op_type for n in graph.node]
    assert ops.count("DepthToSpace") == 1 and "Gather" not in ops


def test_folded_head_takes_the_heads_dtype_and_refuses_training() -> None:
    head = _random_head(2, 2, False, "pytorch").double()
    folded = fold_head(head)
    assert folded.weight.dtype == torch.float64 and not folded.training
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x)[1], head(x)[-1], rtol=1e-10, atol=1e-10)
    with pytest.raises(RuntimeError, match="inference only"):
        folded.train()(x)


def test_export_without_folding_keeps_the_stages(tmp_path) -> None:
    import onnx

    from upseg.deploy.export import export_onnx

    model = build("elunet", 2, 3, 16, 64, head="plain", base_width=4)
    report = export_onnx(model, tmp_path / "m.onnx", fold=False)  # checked against PyTorch
    assert report["max_abs_diff"] <= 1e-4
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "DepthToSpace" not in ops


def _random_features_head(num_classes: int, num_stages: int, width: int) -> UpscalingHead:
    conv = torch.nn.Conv2d(width, num_classes, 1)
    head = UpscalingHead(num_classes, num_stages, init="bilinear", logit_conv=conv).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return head


@pytest.mark.parametrize(("num_classes", "num_stages", "width"), [(1, 1, 3), (2, 3, 8), (4, 2, 5)])
@pytest.mark.parametrize("size", [(1, 1), (1, 4), (3, 5), (16, 16)])
def test_folded_features_head_equals_the_stages(num_classes, num_stages, width, size) -> None:
    """The folded conv of a features head reads the C_f feature channels."""
    head = _random_features_head(num_classes, num_stages, width)
    folded = fold_head(head)
    scale = 2**num_stages
    assert folded.in_channels == width
    assert folded.weight.shape == (4, 4, num_classes * scale * scale, width, 3, 3)
    features, logits = torch.randn(2, width, *size), torch.randn(2, num_classes, *size)
    with torch.no_grad():
        expected, got = head(features, logits), folded(features, logits)
    assert len(got) == 2 and got[0] is logits
    assert got[1].shape == expected[-1].shape == (2, num_classes, size[0] * scale, size[1] * scale)
    atol = 1e-5 * expected[-1].abs().max()
    torch.testing.assert_close(got[1], expected[-1], rtol=1e-5, atol=atol)


def test_fold_model_of_a_features_model_matches_it() -> None:
    model = build("elunet", 3, 2, 16, 128, head_input="features", base_width=4).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folded = fold_model(model)
    assert isinstance(folded.head, FoldedHead) and folded.head.in_channels == 4
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
        stages = [o.shape for o in model.forward_all(x)]
        ends = folded.forward_all(x)
    assert [o.shape for o in ends] == [stages[0], stages[-1]]
    torch.testing.assert_close(ends[0], model.forward_all(x)[0])  # the logits at r


def _margins(logits: torch.Tensor) -> torch.Tensor:
    """Per pixel: how far the winning class is ahead of the runner-up (one channel: |logit|)."""
    if logits.shape[1] == 1:
        return logits[:, 0].abs()
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


@pytest.mark.parametrize(
    ("num_classes", "num_stages", "skip", "width"),
    [
        (1, 2, False, None),
        (2, 3, False, None),
        (4, 4, True, None),
        (4, 2, False, 6),
        (2, 2, False, 6),
        (4, 3, False, 16),
        (2, 4, False, 16),
    ],
)
@pytest.mark.parametrize("size", [(1, 1), (1, 4), (3, 5), (16, 16)])
def test_folded_labels_are_the_argmax_of_the_stages(num_classes, num_stages, skip, width, size):
    """FoldedHead.labels (channels-last, argmax before depth-to-space) gives the labels of the
    head's own output: argmax over classes, logit > 0 for one channel."""
    if width is None:
        head, x, logits = _random_head(num_classes, num_stages, skip, "pytorch"), None, None
        x = 3 * torch.randn(2, num_classes, *size)
        with torch.no_grad():
            expected = head(x)[-1]
    else:
        head = _random_features_head(num_classes, num_stages, width)
        x, logits = torch.randn(2, width, *size), torch.randn(2, num_classes, *size)
        with torch.no_grad():
            expected = head(x, logits)[-1]
    with torch.no_grad():
        got = fold_head(head).labels(x)
    scale = 2**num_stages
    assert got.shape == (2, size[0] * scale, size[1] * scale) and got.dtype == torch.int64
    truth = expected.argmax(1) if num_classes > 1 else (expected[:, 0] > 0).long()
    differ = got != truth
    assert differ.float().mean() < 0.01  # only near-ties may go either way...
    assert (_margins(expected)[differ] < 1e-4 * expected.abs().max()).all()  # ...and are ties


def test_low_rank_factors_are_exact_and_only_where_they_save() -> None:
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(145, 20, generator=generator, dtype=torch.float64)
    matrix = left @ torch.randn(20, 256, generator=generator, dtype=torch.float64)
    factor_in, factor_out = _low_rank(matrix)
    assert factor_in.shape == (145, 20) and factor_out.shape == (20, 256)
    torch.testing.assert_close(factor_in @ factor_out, matrix)
    assert _low_rank(torch.randn(145, 256, generator=generator, dtype=torch.float64)) is None
    assert _low_rank(matrix[:, :8]) is None  # rank 8 of 8 columns: two matrices cost more


@pytest.mark.parametrize(("num_classes", "num_stages"), [(4, 4), (2, 4), (4, 3)])
def test_features_heads_labels_use_the_structural_rank(num_classes, num_stages) -> None:
    """A features head's inner blocks depend on 4 x 4 pixels of Y1 (Nc channels), so their
    labels matrix (9 C_f + 1 rows, bias included) has rank at most 16 Nc + 1: with C_f = 16
    it is applied as two smaller matrices."""
    folded = fold_head(_random_features_head(num_classes, num_stages, 16))
    factor_in = folded.factor_in_11
    assert factor_in.shape[0] == 9 * 16 + 1 and factor_in.shape[1] <= 16 * num_classes + 1


def test_factors_are_derived_not_stored() -> None:
    """Factors come only from float64 weights (a float32 or float16 rank would count rounding)
    and stay out of the state dict; a head built from rounded weights has none and gives the
    same labels."""
    folded = fold_head(_random_features_head(4, 4, 16))
    assert folded.factored and not any("factor" in key for key in folded.state_dict())
    args = (folded.num_classes, folded.num_stages, folded.in_channels)
    for dtype in (torch.float32, torch.float16):
        rounded = FoldedHead(folded.weight.to(dtype), folded.bias.to(dtype), *args)
        assert not rounded.factored
    rounded = FoldedHead(folded.weight.float(), folded.bias.float(), *args)
    rounded.load_state_dict(folded.state_dict())
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        assert torch.equal(rounded.labels(x), folded.labels(x))


def test_two_classes_tied_everywhere_are_class_0() -> None:
    """Equal logits for both classes: argmax picks the first, and so does the difference."""
    weight = torch.randn(4, 4, 1, 16, 6, 3, 3, dtype=torch.float64)
    bias = torch.randn(4, 4, 1, 16, dtype=torch.float64)
    weight, bias = weight.expand(-1, -1, 2, -1, -1, -1, -1), bias.expand(-1, -1, 2, -1)
    folded = FoldedHead(weight.reshape(4, 4, 32, 6, 3, 3), bias.reshape(4, 4, 32), 2, 2, 6)
    labels = folded.labels(torch.randn(2, 6, 4, 5, dtype=torch.float64))
    assert labels.shape == (2, 16, 20) and not labels.any()
