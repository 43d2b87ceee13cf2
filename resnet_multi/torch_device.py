"""The torch backend's training-loop step, written for a GPU (only its CPU path has run so far).

What :meth:`resnet_multi.torch.TorchBackend.train_step` (the step ``train.fit`` runs) uses:

* :class:`DeviceMetrics`: no host synchronisation a step; loss x images, correct
  predictions and the first non-finite loss are summed in device tensors and read once
  per progress mark (five an epoch) and at the epoch's end;
* :class:`DeviceBatches` (on CUDA, or with ``device_batches=True``): the uint8 images are
  copied to the device once, from pinned memory, and every batch is gathered, scaled and
  resized there (:func:`resize_bilinear`: the host pipeline's two matrices, so the same
  batches to float32 rounding); on the CPU the backend takes the host pipeline's batches,
  bit-identical to every other backend's.

Channels-last memory and bfloat16 autocast are the backend's options (``configure_training``).
"""

from __future__ import annotations

import functools

import numpy as np

from . import data
from .backend import MetricsReading, StepMetrics, require

torch = require("torch", "torch")


class DeviceMetrics(StepMetrics):
    """:class:`resnet_multi.backend.StepMetrics` summed in tensors on the model's device:
    ``add`` only queues work, ``read`` waits for it (one copy to the host). The loss
    is summed in float64 as loss x images, in step order, as the host version sums
    Python floats, so the two give the same figures bit for bit."""

    deferred = True

    def __init__(self, device):
        super().__init__()
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._correct = torch.zeros((), dtype=torch.int64, device=device)
        self._bad_step = torch.full((), -1.0, dtype=torch.float64, device=device)  # -1: none yet
        self._bad_loss = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, loss, logits, y):
        self.steps += 1
        self.seen += len(y)
        loss = loss.double()
        first = ~torch.isfinite(loss) & (self._bad_step < 0)
        self._bad_step = torch.where(first, float(self.steps), self._bad_step)
        self._bad_loss = torch.where(first, loss, self._bad_loss)
        self._loss_sum += loss * len(y)
        self._correct += (logits.argmax(dim=1) == y).sum()

    def read(self):
        loss_sum, correct, bad_step, bad_loss = torch.stack(
            [self._loss_sum, self._correct.double(), self._bad_step, self._bad_loss]
        ).tolist()
        return MetricsReading(
            loss_sum, int(correct), self.seen, self.steps, None if bad_step < 0 else (int(bad_step), bad_loss)
        )


@functools.lru_cache(maxsize=16)
def _resize_matrices(height: int, width: int, size: int, device: str):
    rows, cols = data.resize_matrices(height, width, size)
    return torch.tensor(rows, device=device), torch.tensor(cols.T, device=device)


def resize_bilinear(x, size: int):
    """(N, H, W) float32 tensor -> (N, size, size) on its own device: ``rows @ x @ cols.T``
    with :func:`resnet_multi.data.resize_bilinear`'s matrices, so the two agree to float32
    rounding (each output sums two nonzero terms per matmul; only FMA and the order of
    the two can differ)."""
    rows, cols_t = _resize_matrices(x.shape[1], x.shape[2], int(size), str(x.device))
    return rows @ x @ cols_t


class DeviceBatches:
    """``(seed, epoch) ->`` the batches :func:`resnet_multi.data.iterate_batches` gives
    (the same order, pixel / 255, the same resize), built on ``device``: the uint8 images
    and labels are copied there once, each epoch's order once (from pinned memory,
    asynchronously, on CUDA), and every batch is gathered, scaled and resized there."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, resize: int | None, device: str):
        self.pinned = torch.device(device).type == "cuda"
        self.device, self.batch_size, self.resize = device, int(batch_size), resize
        self.images = self._upload(np.ascontiguousarray(images, dtype=np.uint8))
        self.labels = self._upload(np.ascontiguousarray(labels, dtype=np.int64))

    def _upload(self, array: np.ndarray):
        host = torch.from_numpy(array)
        if self.pinned:
            host = host.pin_memory()
        return host.to(self.device, non_blocking=self.pinned)

    def __call__(self, seed, epoch):
        order = self._upload(data.batch_order(len(self.labels), shuffle=True, seed=seed, epoch=epoch))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx].to(torch.float32) / float(np.float32(1 / data.SCALE))
            if self.resize is not None:
                x = resize_bilinear(x, self.resize)
            yield x[:, None], self.labels[idx]
