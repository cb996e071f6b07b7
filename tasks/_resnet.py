"""The CIFAR ResNet of He et al. 2016, "Deep Residual Learning for Image Recognition", CVPR, §4.2.

A 3×3 convolution with ``width`` filters, then three stages of ``blocks`` basic blocks (two 3×3
convolutions with batch norm) with ``width``, 2·``width`` and 4·``width`` filters on 32×32, 16×16 and
8×8 maps, then global average pooling: 6·``blocks`` + 2 layers with the classifier (``blocks=3``,
``width=16``: ResNet-20, 0.27M parameters). Departure: where the shape changes, the shortcut is a
1×1 convolution with batch norm (the paper's option B) instead of zero-padded identity (option A).
"""

from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus the shortcut, then ReLU."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(),
            nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels_out),
        )
        reshape = stride != 1 or channels_in != channels_out
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out)
            )
            if reshape
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return (self.body(x) + self.shortcut(x)).relu()


def cifar_resnet(width: int = 16, blocks: int = 3) -> nn.Sequential:
    """The trunk: images ``[B, 3, 32, 32]`` -> features ``[B, 4 · width]``."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    channels = width
    for stage in range(3):
        out = width * 2**stage
        for block in range(blocks):
            layers.append(BasicBlock(channels, out, 2 if stage > 0 and block == 0 else 1))
            channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)
