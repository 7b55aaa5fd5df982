"""The native stage cross entropy against the PyTorch path, and its fallback."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from upseg.losses import MultiScaleLoss, native, softmax_cross_entropy, stage_ce
from upseg.losses.stage_ce import stage_cross_entropy
from upseg.models import build
from upseg.models.head import UpscalingHead, add_border
from upseg.models.subpixel import (
    StageTerms,
    attached_terms,
    attached_windows,
    unshuffle_labels,
    window_view,
)


@pytest.fixture
def kernel() -> None:
    """The parity tests need the built kernel: they fail where it cannot be built (CPU
    training would silently lose its speed there) and skip only where UPSEG_NATIVE=0 turns
    it off on purpose."""
    if stage_ce.native_library() is None:
        reason = native.unavailable_reason("stage_ce")
        if reason == "UPSEG_NATIVE is off":
            pytest.skip(reason)
        pytest.fail(f"the native stage kernel cannot be built here: {reason}")


def make_stage(batch: int, cin: int, classes: int, h: int, w: int, dtype=torch.float32):
    k = 4 * classes
    terms = StageTerms(
        torch.randn(batch, cin, h, w, dtype=dtype, requires_grad=True),
        torch.randn(k, cin, 2, 2, dtype=dtype).mul_(0.7).requires_grad_(),
        torch.randn(k, dtype=dtype, requires_grad=True),
        torch.randn(k, 2, w + 1, dtype=dtype, requires_grad=True),
        torch.randn(k, 2, dtype=dtype, requires_grad=True),
    )
    labels = torch.randint(0, classes, (batch, 2 * h, 2 * w), dtype=torch.uint8)
    return terms, labels


def windows_of(terms: StageTerms) -> torch.Tensor:
    conv = F.conv2d(terms.x, terms.weight, terms.bias, padding=1)
    return add_border(conv, terms.rows, terms.cols)


def reference(terms: StageTerms, labels: torch.Tensor) -> torch.Tensor:
    """Float64 PyTorch: conv, border, cross entropy of the window view."""
    double = StageTerms(*(t.detach().double().requires_grad_() for t in terms))
    loss = softmax_cross_entropy(windows_of(double), unshuffle_labels(labels), windowed=True)
    return loss, double


@pytest.mark.parametrize(
    ("batch", "cin", "classes", "h", "w"),
    [(3, 4, 4, 6, 5), (1, 8, 4, 9, 16), (2, 3, 2, 1, 7), (4, 10, 5, 12, 3), (5, 4, 3, 8, 8)],
)
def test_through_conv_matches_pytorch(kernel, batch, cin, classes, h, w) -> None:
    terms, labels = make_stage(batch, cin, classes, h, w)
    windows = windows_of(terms)
    loss = stage_cross_entropy(windows, terms, labels, through_conv=True)
    expected, double = reference(terms, labels)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    ours = torch.autograd.grad(loss, list(terms))
    theirs = torch.autograd.grad(expected, list(double))
    for name, a, b in zip(StageTerms._fields, ours, theirs, strict=True):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(("batch", "classes", "h", "w"), [(3, 4, 6, 5), (2, 2, 1, 9)])
def test_on_windows_matches_pytorch(kernel, batch, classes, h, w) -> None:
    terms, labels = make_stage(batch, 4, classes, h, w)
    windows = windows_of(terms).detach().requires_grad_()
    loss = stage_cross_entropy(windows, terms, labels, through_conv=False)
    double = windows.detach().double().requires_grad_()
    expected = softmax_cross_entropy(double, unshuffle_labels(labels), windowed=True)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    (ours,) = torch.autograd.grad(loss, windows)
    (theirs,) = torch.autograd.grad(expected, double)
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-4, atol=1e-7)
    # the entries no window reaches get exactly zero
    assert (ours[:, :, 0, :][:, 2:4] == 0).all() and (ours[:, :, -1, :][:, 0:2] == 0).all()


@pytest.mark.parametrize("through_conv", [True, False])
def test_class_sums_and_their_gradient_match_pytorch(kernel, through_conv: bool) -> None:
    """P_c and I_c of a soft Dice, and a loss that weighs them (and the cross entropy) with
    arbitrary factors, back-propagated through the kernel and through float64 PyTorch."""
    batch, classes, h, w = 3, 4, 5, 7
    terms, labels = make_stage(batch, 4, classes, h, w)
    weights = torch.randn(2, classes, dtype=torch.float64)
    windows = windows_of(terms)
    if not through_conv:
        windows = windows.detach().requires_grad_()
    ce, sums = stage_ce.stage_terms(windows, terms, labels, through_conv, class_sums=True)
    loss = 0.3 * ce + (weights * sums).sum()
    double_terms = StageTerms(*(t.detach().double().requires_grad_() for t in terms))
    double = windows_of(double_terms)
    if not through_conv:
        double = windows.detach().double().requires_grad_()
    probs = torch.softmax(window_view(double), 1)  # (B, K, 2, 2, h, w)
    onehot = F.one_hot(unshuffle_labels(labels).long(), classes).permute(0, 5, 1, 2, 3, 4)
    expected_sums = torch.stack([probs.sum((0, 2, 3, 4, 5)), (probs * onehot).sum((0, 2, 3, 4, 5))])
    torch.testing.assert_close(sums.double(), expected_sums, rtol=1e-5, atol=1e-5)
    expected_ce = softmax_cross_entropy(double, unshuffle_labels(labels), windowed=True)
    expected = 0.3 * expected_ce + (weights * expected_sums).sum()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    ours_inputs = list(terms) if through_conv else [windows]
    theirs_inputs = list(double_terms) if through_conv else [double]
    ours = torch.autograd.grad(loss, ours_inputs)
    theirs = torch.autograd.grad(expected, theirs_inputs)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_the_sums_do_not_depend_on_timing_and_threads_agree(kernel) -> None:
    terms, labels = make_stage(7, 4, 4, 10, 10)
    threads = torch.get_num_threads()

    def grads(n: int) -> list[torch.Tensor]:
        torch.set_num_threads(n)
        try:
            loss = stage_cross_entropy(windows_of(terms), terms, labels, through_conv=True)
            return [loss, *torch.autograd.grad(loss, list(terms))]
        finally:
            torch.set_num_threads(threads)

    first, again, one = grads(2), grads(2), grads(1)
    for a, b, c in zip(first, again, one, strict=True):
        assert torch.equal(a, b)  # the same split gives the same bits
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_logit_gives_a_nan_loss(kernel, bad: float) -> None:
    terms, labels = make_stage(2, 4, 3, 4, 4)
    windows = windows_of(terms).detach()
    windows[1, 5, 2, 3] = bad
    assert torch.isnan(stage_cross_entropy(windows, terms, labels, through_conv=True))


def test_usable_only_for_what_the_kernel_computes(kernel) -> None:
    terms, labels = make_stage(2, 4, 3, 4, 4)
    windows = windows_of(terms)
    assert stage_ce.usable(windows, terms, labels)
    assert not stage_ce.usable(windows.double(), terms, labels)
    assert not stage_ce.usable(windows, terms, labels.float())  # soft targets
    assert not stage_ce.usable(windows, terms, labels[:, :-2])
    doubles = StageTerms(*(t.double() for t in terms))
    assert not stage_ce.usable(windows, doubles, labels)


def kernel_against_torch(
    monkeypatch, model, output_size: int, base: str = "ce", side: int = 16
) -> list[tuple[int, bool]]:
    """One training step of `model()` (a fresh, perturbed model each call) with the kernel and
    one without; loss and every gradient must agree. Returns the kernel's calls: (input
    channels of the stage conv, whether it went through the conv). `side`: of the input (R
    for a guided head)."""

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(3)
        net = model().train()
        for p in net.parameters():  # leave the exact start
            p.data.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 2, side, side)
        mask = torch.randint(0, 3, (2, output_size, output_size), dtype=torch.uint8)
        loss = MultiScaleLoss(3, base=base)(net(x), mask)
        loss.backward()
        return loss, {n: p.grad for n, p in net.named_parameters()}

    calls = []
    original = stage_ce.stage_terms
    monkeypatch.setattr(
        stage_ce,
        "stage_terms",
        lambda *a: calls.append((a[1].x.shape[1], a[3])) or original(*a),
    )
    native_loss, native_grads = step()
    monkeypatch.setattr(stage_ce, "usable", lambda *a: False)
    torch_loss, torch_grads = step()
    torch.testing.assert_close(native_loss, torch_loss, rtol=1e-5, atol=1e-6)
    for name, grad in torch_grads.items():  # float32 sums in another order, through the backbone
        error = (native_grads[name] - grad).abs().max()
        assert error <= 1e-4 * grad.abs().max(), name
    return calls


@pytest.mark.parametrize("base", ["ce", "dice_ce", "dice"])
@pytest.mark.parametrize("head", ["plain", "skip"])
def test_a_head_model_trains_the_same_with_and_without_the_kernel(kernel, monkeypatch, head, base):
    calls = kernel_against_torch(
        monkeypatch, lambda: build("elunet", 2, 3, 16, 128, head=head), 128, base
    )
    assert [c[1] for c in calls] == [False, False, True]  # the finest: through its conv


@pytest.mark.parametrize(("output_size", "through"), [(32, [True]), (64, [False, True])])
def test_a_features_head_trains_the_same_with_and_without_the_kernel(
    kernel, monkeypatch, output_size: int, through: list[bool]
) -> None:
    """Stage 1 of a features head reads C_f = 8 channels (ELU-Net at base width 8), not Nc:
    with one stage the kernel takes the gradient through that wide conv into the features."""

    def model() -> torch.nn.Module:
        net = build("elunet", 2, 3, 16, output_size, head_input="features", base_width=8)
        assert net.head.stages[0][0].in_channels == 8
        return net

    calls = kernel_against_torch(monkeypatch, model, output_size, "dice_ce")
    assert [c[1] for c in calls] == through and calls[0][0] == 8  # stage 1 reads the features


def test_a_guided_head_trains_the_same_with_and_without_the_kernel(kernel, monkeypatch) -> None:
    """Every stage of a guided head reads 8 guide channels beside its input (stage 1: the
    C_f = 8 features too); the kernel's gradient through the finest stage's conv reaches its
    guide, whose input is the full-resolution image."""

    def model() -> torch.nn.Module:
        return build("elunet", 2, 3, 16, 64, head="guided", base_width=8)

    calls = kernel_against_torch(monkeypatch, model, 64, "dice_ce", side=64)
    assert calls == [(8 + 8, False), (3 + 8, True)]


def test_without_a_compiler_the_kernel_is_skipped_and_training_goes_on(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("UPSEG_CACHE", str(tmp_path / "cache"))
    native.forget()
    try:
        assert stage_ce.native_library() is None
        assert "no-such-compiler" in native.unavailable_reason("stage_ce")
        model = build("elunet", 2, 3, 16, 64, head="plain").train()
        mask = torch.randint(0, 3, (2, 64, 64), dtype=torch.uint8)
        loss = MultiScaleLoss(3)(model(torch.randn(2, 2, 16, 16)), mask)
        loss.backward()
        assert torch.isfinite(loss)
    finally:
        native.forget()


def test_native_off_by_environment(monkeypatch) -> None:
    monkeypatch.setenv("UPSEG_NATIVE", "0")
    native.forget()
    try:
        assert native.load("stage_ce") is None
        assert native.unavailable_reason("stage_ce") == "UPSEG_NATIVE is off"
    finally:
        native.forget()


def test_a_build_is_cached_and_reused(kernel, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("UPSEG_CACHE", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    native.forget()
    try:
        assert native.load("stage_ce") is not None
        built = list((tmp_path / "kernels").glob("stage_ce-*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        native.forget()
        assert native.load("stage_ce") is not None
        assert built[0].stat().st_mtime_ns == stamp
        assert list((tmp_path / "kernels").iterdir()) == built  # no partial files left
    finally:
        native.forget()


def test_an_unwritable_cache_falls_back_to_the_temporary_directory(kernel, monkeypatch, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("UPSEG_CACHE", str(blocked))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    native.forget()
    try:
        assert native.load("stage_ce") is not None
        assert list((tmp_path / "tmp").glob("upseg-*/kernels/stage_ce-*.so"))
    finally:
        native.forget()


def test_a_writable_cache_never_loads_from_the_temporary_directory(kernel, monkeypatch, tmp_path):
    planted = tmp_path / "tmp"
    monkeypatch.setattr(tempfile, "tempdir", str(planted))
    monkeypatch.setenv("UPSEG_CACHE", str(tmp_path / "cache"))
    native.forget()
    try:
        library = native.load("stage_ce")
        assert library is not None
        assert Path(library._name).parent == tmp_path / "cache" / "kernels"
        assert not planted.exists()
    finally:
        native.forget()


def test_a_damaged_cached_build_is_built_again(kernel, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("UPSEG_CACHE", str(tmp_path))
    native.forget()
    try:
        assert native.load("stage_ce") is not None
        (built,) = (tmp_path / "kernels").glob("stage_ce-*.so")
        built.write_bytes(b"not a shared library")
        # a new process: this one keeps the library it opened under that name
        check = "from upseg.losses import native; assert native.load('stage_ce') is not None"
        subprocess.run([sys.executable, "-c", check], check=True, timeout=120)
        assert built.read_bytes().startswith(b"\x7fELF")
    finally:
        native.forget()


def test_the_float32_gradients_do_not_follow_the_default_dtype(kernel) -> None:
    terms, labels = make_stage(2, 4, 3, 5, 6)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        loss = stage_cross_entropy(windows_of(terms), terms, labels, through_conv=True)
        grads = torch.autograd.grad(loss, list(terms))
    finally:
        torch.set_default_dtype(previous)
    expected, double = reference(terms, labels)
    for a, b in zip(grads, torch.autograd.grad(expected, list(double)), strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6)


def test_an_input_changed_in_place_after_the_stage_voids_the_record() -> None:
    torch.manual_seed(2)
    head = UpscalingHead(3, 2).train()
    outputs = head(torch.randn(2, 3, 4, 4))
    assert attached_terms(outputs[-1]) is not None
    with torch.no_grad():
        outputs[-2].mul_(2.0)  # the finest stage's input, after the stage ran
    assert attached_terms(outputs[-1]) is None and attached_windows(outputs[-1]) is None
