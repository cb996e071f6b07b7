"""The shared trunks of the CelebA task: FAMO's CNN and MGDA's ResNet-18, in plain ``torch.nn``.

Each builder returns ``(trunk, features)``: the trunk maps images ``[B, 3, H, W]`` to ``[B, features]``,
on which the task puts one linear head per attribute.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import Tensor, nn


def famo_cnn() -> tuple[nn.Module, int]:
    """The shared base of FAMO's CelebA network (``Cranial-XIX/FAMO``, ``experiments/celeba/models.py``,
    ``Network.shared_base``), layer for layer: seven 3×3 convolutions without bias (64, 128, 128, 256,
    256, 512, 512 channels), each followed by batch norm and ReLU, max-pooling by 2 after the 1st,
    3rd and 5th; global average pooling; two 512→512 linear layers without bias, each with batch norm
    and ReLU. Built for 64×64 inputs (any size from 8×8 works: the pooling is adaptive)."""
    layers: list[nn.Module] = []
    channels = [3, 64, 128, 128, 256, 256, 512, 512]
    for i, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        if i in (0, 2, 4):
            layers.append(nn.MaxPool2d(2, stride=2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    for _ in range(2):
        layers += [nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU()]
    return nn.Sequential(*layers), 512


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al. 2016): two 3×3 convolutions with batch norm, plus the input
    (through a 1×1 convolution and batch norm where the stride or the width changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def resnet18() -> tuple[nn.Module, int]:
    """ResNet-18 as MGDA trains on CelebA (Sener & Koltun 2018; ``isl-org/MultiObjectiveOptimization``,
    ``multi_task/models/multi_faces_resnet.py``): a 3×3 stride-1 stem (64 channels, batch norm, ReLU,
    no max-pool), four stages of two :class:`BasicBlock` (64, 128, 256, 512 channels; strides 1, 2, 2,
    2), then average pooling to 2×2 and flattening: 2,048 features. On 64×64 inputs the pooling is
    the original's ``avg_pool2d(out, 4)`` on the 8×8 map; adaptive pooling keeps smaller inputs
    usable."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    return nn.Sequential(*layers), 512 * 2 * 2


MODELS: Mapping[str, Callable[[], tuple[nn.Module, int]]] = MappingProxyType(
    {"famo_cnn": famo_cnn, "resnet18": resnet18}
)
"""The ``model`` choices of the CelebA task."""
