"""The evaluation every command shares (training epochs, ``evaluate``, export checks): test loss, top-1, top-5."""
from __future__ import annotations

import torch
from torch import nn

from bnnbench import faults
from bnnbench.engine import distributed as ddp
from bnnbench.engine.rebuild import on_device


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: bool) -> dict:
    """``{"test_loss", "test_top1", "test_top5"}`` over ``loader`` (summed over the ranks under DDP)."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct1 = torch.zeros((), device=device, dtype=torch.int64)
    correct5 = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    for x, y in on_device(loader, device):
        with torch.autocast(device.type, enabled=amp):
            out = model(x)
        loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum")
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        hits = top == y[:, None]
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        n += len(y)
        faults.point("eval")
    model.train()
    totals = ddp.all_reduce_sum(torch.stack([loss_sum, correct1.double(), correct5.double(),
                                             torch.tensor(float(n), device=device, dtype=torch.float64)]))
    loss, c1, c5, n = totals.tolist()
    return {"test_loss": loss / n, "test_top1": 100.0 * c1 / n, "test_top5": 100.0 * c5 / n}
