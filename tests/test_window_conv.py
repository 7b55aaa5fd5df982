import pytest
import torch
import torch.nn.functional as F

from upseg.window_conv import window_conv, window_weight_grad


@pytest.mark.parametrize(("in_channels", "out_channels"), [(1, 4), (4, 16), (8, 16)])
@pytest.mark.parametrize("size", [(1, 1), (2, 5), (7, 3), (16, 16)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_backward_equals_autograd_of_conv2d(in_channels, out_channels, size, channels_last):
    x = torch.randn(3, in_channels, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(out_channels, in_channels, 2, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(out_channels, dtype=torch.float64, requires_grad=True)
    ours, reference = window_conv(x, weight, bias), F.conv2d(x, weight, bias, padding=1)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert ours.grad_fn is not None and "WindowConv" in type(ours.grad_fn).__name__
    grad = torch.randn_like(reference)
    got = torch.autograd.grad(ours, (x, weight, bias), grad)
    expected = torch.autograd.grad(reference, (x, weight, bias), grad)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_weight_gradient_alone_and_without_input_gradient():
    x = torch.randn(2, 3, 6, 4)
    weight = torch.randn(12, 3, 2, 2, requires_grad=True)
    bias = torch.randn(12, requires_grad=True)
    grad = torch.randn(2, 12, 7, 5)
    (expected,) = torch.autograd.grad(F.conv2d(x, weight, bias, padding=1), weight, grad)
    torch.testing.assert_close(window_weight_grad(grad, x), expected, rtol=1e-5, atol=1e-5)
    (got,) = torch.autograd.grad(window_conv(x, weight, bias), weight, grad)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_plain_conv2d_where_the_custom_backward_does_not_apply():
    x = torch.randn(1, 2, 3, 3)
    weight, bias = torch.randn(8, 2, 2, 2), torch.randn(8)
    with torch.no_grad():
        assert window_conv(x, weight, bias).grad_fn is None
    with torch.autocast("cpu", torch.bfloat16):
        out = window_conv(x, weight.requires_grad_(), bias)
    assert out.dtype == torch.bfloat16 and "WindowConv" not in type(out.grad_fn).__name__
