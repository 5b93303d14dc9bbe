"""2D U-Net and Attention U-Net segmentation networks, small enough for a CPU.

:class:`UNet` is the encoder-decoder of Ronneberger et al. (2015, "U-Net:
Convolutional Networks for Biomedical Image Segmentation"): at each of ``depth``
levels two 3x3 convolutions (batch norm, ReLU), 2x2 max pooling on the way down,
a 2x2 transposed convolution on the way up, and the encoder's feature map of the
same level concatenated onto the decoder's (the skip connection). The channels
double per level from ``base_channels``.

:class:`AttentionUNet` adds the additive attention gate of Oktay et al. (2018,
"Attention U-Net: Learning Where to Look for the Pancreas") on every skip
connection: the coarser decoder features *g* gate the encoder features *x*,
``alpha = sigmoid(psi(relu(W_x x + W_g g)))``, and the decoder receives
``alpha * x`` instead of ``x``, so background structures that look like the
target are suppressed before they are fused.

Both take ``(batch, in_channels, height, width)`` and return logits of shape
``(batch, out_channels, height, width)``. Any height and width work: the input is
padded to a multiple of ``2 ** (depth - 1)`` and the output cropped back.

:func:`fuse_batch_norm` gives an inference copy with every batch norm folded into
the convolution before it: the same function of the input with one pass over each
feature map fewer (weights files are unchanged; the copy is built at load time).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionGate", "AttentionUNet", "Norm", "UNet", "build_unet", "fuse_batch_norm"]


#: Normalisation after each convolution: batch norm, or group norm (8 groups or fewer).
Norm = Literal["batch", "group"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _double_conv(in_channels: int, out_channels: int, norm: Norm) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by the normalisation and ReLU."""
    # No convolution bias: the normalisation that follows has its own shift.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        _norm(norm, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        _norm(norm, out_channels),
        nn.ReLU(inplace=True),
    )


def _init_weights(module: nn.Module) -> None:
    """He initialisation (He et al. 2015) for convolutions followed by ReLU.

    torch's default (uniform, gain for a leaky ReLU of slope sqrt(5)) starts every
    layer with a smaller signal than it passes on.
    """
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class AttentionGate(nn.Module):
    """Additive attention gate on one skip connection (Oktay et al. 2018, Fig. 2).

    Parameters
    ----------
    skip_channels
        Channels of the encoder features *x* (the skip connection).
    gate_channels
        Channels of the gating signal *g*, the decoder features one level coarser
        (half the resolution of *x*).
    inter_channels
        Channels of the intermediate sum; half of ``skip_channels`` by default.
    norm
        Normalisation of the output transform.
    """

    def __init__(
        self,
        skip_channels: int,
        gate_channels: int,
        inter_channels: int = 0,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        inter = inter_channels or max(1, skip_channels // 2)
        # W_x brings x to g's resolution with a strided 2x2 convolution, as in the paper.
        self.theta_x = nn.Conv2d(skip_channels, inter, 2, stride=2, bias=False)
        self.phi_g = nn.Conv2d(gate_channels, inter, 1)
        self.psi = nn.Conv2d(inter, 1, 1)
        # Output transform W (1x1 convolution + batch norm) of the reference code.
        self.out = nn.Sequential(
            nn.Conv2d(skip_channels, skip_channels, 1, bias=False),
            _norm(norm, skip_channels),
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Return ``alpha * x``, the gated skip features (same shape as ``x``).

        Parameters
        ----------
        x
            Encoder features ``(batch, skip_channels, H, W)``, H and W even.
        g
            Gating features ``(batch, gate_channels, H / 2, W / 2)``.
        """
        theta = self.theta_x(x)
        phi = self.phi_g(g)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        # The paper's "resampler": attention coefficients back to x's grid (bilinear).
        alpha = F.interpolate(alpha, size=x.shape[2:], mode="bilinear", align_corners=False)
        out: torch.Tensor = self.out(alpha * x)
        return out


class UNet(nn.Module):
    """A 2D U-Net; with ``attention=True`` an Attention U-Net.

    Parameters
    ----------
    in_channels
        Input channels (e.g. adjacent slices times intensity windows).
    out_channels
        Output channels (logits), one per label.
    base_channels
        Feature channels at the first level; doubled at each level down.
    depth
        Number of resolution levels (``depth - 1`` poolings), at least 2.
    attention
        Put an :class:`AttentionGate` on every skip connection.
    norm
        ``batch`` (batch norm) or ``group`` (group norm) after every convolution.

    Raises
    ------
    ValueError
        When a size argument is out of range; the message names it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 16,
        depth: int = 4,
        attention: bool = False,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("base_channels", base_channels, 1),
            ("depth", depth, 2),
        ):
            if value < low:
                raise ValueError(f"UNet {name} must be at least {low}, got {value}")
        self.depth = depth
        self.attention = attention
        widths = [base_channels * 2**level for level in range(depth)]
        self.encoders = nn.ModuleList(
            _double_conv(c_in, c_out, norm)
            for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        # Decoder level i (from the bottom) goes from widths[i + 1] to widths[i].
        levels = range(depth - 1)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in levels
        )
        self.decoders = nn.ModuleList(_double_conv(2 * widths[i], widths[i], norm) for i in levels)
        self.gates = nn.ModuleList(
            AttentionGate(widths[i], widths[i + 1], norm=norm) if attention else nn.Identity()
            for i in levels
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(batch, out_channels, H, W)`` for ``x`` ``(batch, in, H, W)``."""
        height, width = x.shape[2:]
        multiple = 2 ** (self.depth - 1)
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            # Replicate the border: zeros would look like an edge to the network.
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips: list[torch.Tensor] = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.depth - 1)):
            skip = skips.pop()
            if self.attention:
                skip = self.gates[i](skip, x)
            x = self.decoders[i](torch.cat([skip, self.ups[i](x)], dim=1))
        logits: torch.Tensor = self.head(x)
        return logits[:, :, :height, :width]


class AttentionUNet(UNet):
    """:class:`UNet` with attention gates on its skip connections (Oktay et al. 2018).

    Parameters
    ----------
    in_channels, out_channels, base_channels, depth, norm
        As for :class:`UNet`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 16,
        depth: int = 4,
        norm: Norm = "batch",
    ) -> None:
        super().__init__(in_channels, out_channels, base_channels, depth, True, norm)


def build_unet(
    in_channels: int,
    out_channels: int,
    base_channels: int,
    depth: int,
    attention: bool,
    norm: Norm = "batch",
) -> UNet:
    """Build a :class:`UNet` or, with ``attention``, an :class:`AttentionUNet`.

    Parameters
    ----------
    in_channels, out_channels, base_channels, depth, norm
        As for :class:`UNet`.
    attention
        Which of the two networks.

    Returns
    -------
    UNet
        The network, in training mode, with freshly initialised weights.
    """
    if attention:
        return AttentionUNet(in_channels, out_channels, base_channels, depth, norm)
    return UNet(in_channels, out_channels, base_channels, depth, norm=norm)


def fuse_batch_norm(net: UNet) -> UNet:
    """Return an inference copy of ``net`` with each batch norm folded into its convolution.

    In evaluation mode a batch norm is the affine map
    ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` per channel (fixed statistics:
    Ioffe and Szegedy 2015, "Batch Normalization"), so a convolution followed by it is
    one convolution with scaled filters and a new bias. Every ``Conv2d`` directly
    followed by a ``BatchNorm2d`` in a ``Sequential`` becomes that convolution and the
    norm an ``Identity``; group norms (which depend on the input) are left as they are.
    ``net`` is not changed.

    Parameters
    ----------
    net
        A trained network; its running statistics are used.

    Returns
    -------
    UNet
        The copy, in evaluation mode, on ``net``'s device.
    """
    fused = copy.deepcopy(net).eval()
    sequences = [m for m in fused.modules() if isinstance(m, nn.Sequential)]
    for sequence in sequences:
        children = list(sequence.named_children())
        for (name, conv), (norm_name, norm) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(sequence, name, _folded(conv, norm))
                setattr(sequence, norm_name, nn.Identity())
    return fused


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing ``norm(conv(x))`` of an evaluation-mode batch norm."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("fuse_batch_norm needs batch norms with running statistics")
    # Folded in float64, so the only rounding is the final cast to the weights' dtype.
    mean = norm.running_mean.double()
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    dtype, device = conv.weight.dtype, conv.weight.device
    out = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=device,
        dtype=dtype,
    ).eval()
    with torch.no_grad():
        out.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
        assert out.bias is not None
        out.bias.copy_(shift.to(dtype))
    return out
