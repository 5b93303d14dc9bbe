"""The scanner: kernel, tube voltage, noise level and texture, streaks, field of view.

Noise is what makes a CT a CT: here it is Gaussian noise shaped by a noise power
spectrum (NPS) of the ramp-times-apodisation form of filtered back-projection,
``NPS(f) ~ f exp(-(f / fc)^2)``, so a sharp kernel gives fine, strong noise and a soft
one coarse, weak noise; its level grows with the X-ray path through the body (the
centre of a wide patient is noisiest). Streaks radiate from metal and a dense bolus,
and a dark band joins two dense bones (beam hardening between the hips or shoulders).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import fft, ndimage

from dicomnode.synth.ct._atlas import Streak

__all__ = ["KERNELS", "Kernel", "Scanner", "add_noise", "add_streaks", "blur", "draw_scanner"]

Image = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Kernel:
    """A reconstruction kernel.

    Attributes
    ----------
    name
        ConvolutionKernel value, in the style of several vendors.
    psf
        Standard deviation of the in-plane point spread function, millimetres.
    edge
        Edge enhancement (overshoot) of sharp kernels, 0 for none.
    cutoff
        Noise power spectrum apodisation frequency, cycles per millimetre.
    noise
        Noise level relative to a standard soft-tissue kernel.
    """

    name: str
    psf: float
    edge: float
    cutoff: float
    noise: float


KERNELS = (
    Kernel("B20f", 0.95, 0.0, 0.26, 0.7),
    Kernel("FC08", 1.0, 0.0, 0.24, 0.65),
    Kernel("STANDARD", 0.75, 0.0, 0.38, 1.0),
    Kernel("B30f", 0.7, 0.0, 0.4, 1.0),
    Kernel("Br40", 0.6, 0.1, 0.45, 1.15),
    Kernel("B50f", 0.5, 0.3, 0.55, 1.5),
    Kernel("LUNG", 0.42, 0.6, 0.7, 2.2),
    Kernel("BONE", 0.38, 0.8, 0.8, 2.6),
)
_KERNEL_WEIGHTS = (0.12, 0.08, 0.2, 0.2, 0.15, 0.1, 0.08, 0.07)
_KVP = (80, 100, 120, 140)
_KVP_WEIGHTS = (0.1, 0.3, 0.5, 0.1)
_NOISE_AT_KVP = {80: 1.35, 100: 1.12, 120: 1.0, 140: 0.9}
# How fast noise grows with the water-equivalent path (per mm); tube current
# modulation compensates part of the exponential attenuation.
_PATH_NOISE = 0.0035


@dataclass(frozen=True, slots=True)
class Scanner:
    """One study's acquisition and reconstruction settings.

    Attributes
    ----------
    kernel
        The reconstruction kernel.
    kvp
        Tube voltage, kV.
    noise_sigma
        Noise standard deviation at the noisiest place of a slice, HU.
    field_of_view
        Reconstruction diameter, millimetres.
    circular
        Pixels outside the reconstruction circle are set to -1024 (padding).
    signed
        Pixels are stored as signed 16-bit with intercept 0 (else 12-bit unsigned
        with intercept -1024).
    """

    kernel: Kernel
    kvp: int
    noise_sigma: float
    field_of_view: float
    circular: bool
    signed: bool


def draw_scanner(
    rng: np.random.Generator,
    thickness: float,
    field_of_view: float,
    noise_range: tuple[float, float],
) -> Scanner:
    """Draw a scanner's settings for a series of this slice thickness and field of view."""
    kernel = KERNELS[int(rng.choice(len(KERNELS), p=_KERNEL_WEIGHTS))]
    kvp = int(_KVP[int(rng.choice(len(_KVP), p=_KVP_WEIGHTS))])
    low, high = noise_range
    reference = math.exp(rng.uniform(math.log(low), math.log(high)))
    # Thin slices average fewer photons: noise ~ 1 / sqrt(thickness).
    sigma = reference * kernel.noise * _NOISE_AT_KVP[kvp] / math.sqrt(max(thickness, 0.5))
    return Scanner(
        kernel=kernel,
        kvp=kvp,
        noise_sigma=float(min(max(sigma, 3.0), 90.0)),
        field_of_view=field_of_view,
        circular=bool(rng.random() < 0.6),
        signed=bool(rng.random() < 0.4),
    )


def blur(hu: Image, kernel: Kernel, pixel_spacing: float) -> Image:
    """Apply the kernel's point spread function in plane (and its edge overshoot)."""
    # At least half a pixel: the blur also anti-aliases edges sampled at pixel centres.
    sigma = max(kernel.psf / pixel_spacing, 0.45)
    out: Image = ndimage.gaussian_filter(hu, sigma=(0.0, sigma, sigma), mode="nearest")
    if kernel.edge > 0.0:
        wide = ndimage.gaussian_filter(out, sigma=(0.0, 2 * sigma, 2 * sigma), mode="nearest")
        out += np.float32(kernel.edge) * (out - wide)
    return out


def _nps_filter(rows: int, columns: int, pixel_spacing: float, cutoff: float) -> Image:
    """Amplitude filter (rfft2 layout) giving noise of unit variance with the NPS shape."""
    fy = np.fft.fftfreq(rows, d=pixel_spacing)[:, None]
    fx = np.fft.fftfreq(columns, d=pixel_spacing)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    amplitude = np.sqrt((f + 0.03) * np.exp(-((f / cutoff) ** 2)))
    # The variance of filtered unit white noise is the mean squared filter gain.
    amplitude /= math.sqrt(float(np.mean(amplitude**2)))
    half = columns // 2 + 1
    return np.ascontiguousarray(amplitude[:, :half], dtype=np.float32)


def add_noise(
    hu: Image,
    seeds: Sequence[Sequence[int]],
    scanner: Scanner,
    pixel_spacing: float,
) -> None:
    """Add correlated, position-dependent noise to each slice in place.

    ``seeds[k]`` seeds slice k's generator, so a slice's noise does not depend on the
    slab it was rendered in.
    """
    _, rows, columns = hu.shape
    white = np.empty_like(hu)
    for k, seed in enumerate(seeds):
        white[k] = np.random.default_rng(list(seed)).standard_normal((rows, columns), np.float32)
    gain = _nps_filter(rows, columns, pixel_spacing, scanner.kernel.cutoff)
    spectrum = fft.rfft2(white, axes=(1, 2), workers=2)
    spectrum *= gain
    noise = fft.irfft2(spectrum, s=(rows, columns), axes=(1, 2), workers=2).astype(np.float32)
    # Water-equivalent path along each row and column (mm): longer paths, more noise.
    # exp(k (a_i + b_j)) = exp(k a_i) exp(k b_j), so the noise map is separable.
    water = hu + np.float32(1000.0)
    np.maximum(water, 0.0, out=water)
    scale = np.float32(pixel_spacing / 1000.0 * _PATH_NOISE / 2)
    along_rows = water.sum(axis=2) * scale
    along_columns = water.sum(axis=1) * scale
    noise *= np.exp(along_rows - along_rows.max(axis=1, keepdims=True))[:, :, None]
    noise *= np.exp(along_columns - along_columns.max(axis=1, keepdims=True))[:, None, :]
    noise *= np.float32(scanner.noise_sigma)
    hu += noise


def add_streaks(
    hu: Image,
    z: float,
    streaks: Sequence[Streak],
    axes: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    rng: np.random.Generator,
) -> None:
    """Add streaks from the sources spanning `z` to one slice (rows along y, columns x)."""
    x, y = axes
    for streak in streaks:
        if not streak.z0 <= z <= streak.z1:
            continue
        if streak.partner is not None:
            _dark_band(hu, streak, x, y, rng)
        else:
            _radiating(hu, streak, x, y, rng)


def _window(
    streak: Streak, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], half: float
) -> tuple[slice, slice]:
    cx, cy = streak.centre
    j0, j1 = np.searchsorted(x, cx - half), np.searchsorted(x, cx + half)
    i0, i1 = np.searchsorted(y, cy - half), np.searchsorted(y, cy + half)
    return slice(int(i0), int(i1)), slice(int(j0), int(j1))


def _radiating(
    hu: Image,
    streak: Streak,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    rng: np.random.Generator,
) -> None:
    """Thin bright and (mostly) dark lines through a dense object, fading with distance."""
    rows, columns = _window(streak, x, y, 160.0)
    if rows.start >= rows.stop or columns.start >= columns.stop:
        return
    dx = x[None, columns] - np.float32(streak.centre[0])
    dy = y[rows, None] - np.float32(streak.centre[1])
    distance = np.sqrt(dx * dx + dy * dy)
    fade = 1.0 / (1.0 + distance / np.float32(25.0))
    spacing = float(x[1] - x[0]) if len(x) > 1 else 1.0
    total = np.zeros(distance.shape, dtype=np.float32)
    for _ in range(int(4 + 12 * streak.strength)):
        angle = float(rng.uniform(0.0, math.pi))
        across = dx * np.float32(math.sin(angle)) - dy * np.float32(math.cos(angle))
        width = np.float32(spacing * rng.uniform(0.6, 1.6))
        sign = -1.0 if rng.random() < 0.65 else 1.0
        amplitude = np.float32(sign * 150.0 * streak.strength * rng.uniform(0.2, 1.0))
        total += amplitude * np.exp(-((across / width) ** 2))
    hu[rows, columns] += total * fade


def _dark_band(
    hu: Image,
    streak: Streak,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    rng: np.random.Generator,
) -> None:
    """Beam hardening: a dark band along the line joining two dense bones."""
    assert streak.partner is not None
    (ax, ay), (bx, by) = streak.centre, streak.partner
    length = math.hypot(bx - ax, by - ay)
    if length < 1.0:
        return
    ux, uy = (bx - ax) / length, (by - ay) / length
    dx = x[None, :] - np.float32(ax)
    dy = y[:, None] - np.float32(ay)
    along = dx * np.float32(ux) + dy * np.float32(uy)
    across = dx * np.float32(-uy) + dy * np.float32(ux)
    width = np.float32(rng.uniform(6.0, 14.0))
    inside = np.clip(np.minimum(along, np.float32(length) - along) / np.float32(20.0), 0.0, 1.0)
    depth = np.float32(-60.0 * streak.strength * rng.uniform(0.5, 1.3))
    hu += depth * inside * np.exp(-((across / width) ** 2))
