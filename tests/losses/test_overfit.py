"""One batch, 50 Adam steps: the multi-scale loss of a head model must fall by at least half."""

import pytest
import torch
import torch.nn.functional as F

from upseg.losses import MultiScaleLoss
from upseg.models import build

INPUT, OUTPUT, CLASSES = 16, 128, 3


def blob_batch(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks at R with two nested discs each; inputs are the area-downsampled masks + noise."""
    generator = torch.Generator().manual_seed(1)
    ys, xs = torch.meshgrid(torch.arange(OUTPUT), torch.arange(OUTPUT), indexing="ij")
    masks = torch.zeros(batch, OUTPUT, OUTPUT, dtype=torch.long)
    for i in range(batch):
        cy, cx = (torch.rand(2, generator=generator) * 0.5 + 0.25) * OUTPUT
        radius = 12 + 24 * float(torch.rand((), generator=generator))
        distance = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt()
        masks[i][distance < radius] = 1
        masks[i][distance < radius / 2] = 2
    one_hot = F.one_hot(masks, CLASSES).permute(0, 3, 1, 2).float()
    images = F.avg_pool2d(one_hot, OUTPUT // INPUT)
    images = images + 0.05 * torch.randn(images.shape, generator=generator)
    return images, masks


@pytest.mark.parametrize("head", ["plain", "skip"])
def test_multiscale_loss_halves_within_50_steps(head: str) -> None:
    images, masks = blob_batch()
    model = build("elunet", CLASSES, CLASSES, INPUT, OUTPUT, head=head, base_width=8).train()
    criterion = MultiScaleLoss(CLASSES, target_resize="soft")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = criterion(model(images), masks)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] <= 0.5 * losses[0], f"loss went {losses[0]:.3f} -> {losses[-1]:.3f}"
