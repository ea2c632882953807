"""The 15 common corruptions of Hendrycks & Dietterich (ICLR 2019, "Benchmarking neural network robustness to
common corruptions and perturbations"), 5 severities each, applied deterministically to uint8 images.

Parameters are the published ones of the authors' generators (github.com/hendrycks/robustness @ 8190fe3,
``ImageNet-C/create_c/make_cifar_c.py`` for CIFAR-10-C and ``make_imagenet_c.py`` for ImageNet-C, Apache-2.0):
the ``cifar`` preset for images up to 64 px, the ``imagenet`` preset above (:func:`preset_for`). The
maintained ``imagecorruptions`` package implements only the ImageNet-C set and no longer imports (it needs
``pkg_resources``), so the formulas are implemented here with numpy/scipy/PIL, as the authors coded them:

* noise: gaussian ``clip(x + N(0, c))``, shot ``clip(Poisson(x c) / c)``, impulse (salt and pepper on a
  fraction c of the values, half each);
* blur: defocus (anti-aliased disk kernel), glass (Gaussian blur, local pixel "swaps", blur again; the
  authors' swap ``x[h,w], x[h',w'] = x[h',w'], x[h,w]`` on numpy views copies x[h',w'] into x[h,w] and leaves
  x[h',w'] unchanged; kept, since the published sets were made that way), motion (ImageMagick's one-sided
  motion blur: weights exp(-i^2 / 2 sigma^2), i < 2 radius + 1, along a random angle, edge pixels repeated;
  the authors called ImageMagick through Wand), zoom (mean of centre zooms);
* weather: snow (zoomed, thresholded, motion-blurred noise layer), frost (a random crop of one of the first
  five frost photographs in ``bnnbench/data/frost/``, from the authors' repository; shrunk to 0.2 for the
  CIFAR preset, bilinear as OpenCV's INTER_LINEAR), fog (a diamond-square plasma fractal);
* digital: brightness (V + c in HSV), contrast ((x - mean) c + mean), elastic (a random affine warp, then a
  smoothed random displacement field), pixelate (box down- and up-sampling), JPEG (quality c).

Each image draws from its own generator seeded by (seed, corruption, severity, index in the test set), so a
corrupted image never depends on the batch, the subset or the order in which it is made. Outputs are
truncated to uint8 as the authors' generators did (``np.uint8(float image)``).
"""
from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy import ndimage
from torch import Tensor

from bnnbench.errors import ConfigError, did_you_mean

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
FROST_DIR = Path(__file__).with_name("frost")
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")


def _elastic(size: int, table) -> list[tuple[float, float, float]]:
    return [(size * a, size * b, size * c) for a, b, c in table]


#: preset -> corruption -> the 5 severities' parameters (make_cifar_c.py / make_imagenet_c.py)
PARAMS: dict[str, dict[str, list]] = {
    "cifar": {
        "gaussian_noise": [0.04, 0.06, .08, .09, .10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [.01, .02, .03, .05, .07],
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        "zoom_blur": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
        "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
        "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        "brightness": [.05, .1, .15, .2, .3],
        "contrast": [.75, .5, .4, .3, 0.15],
        "elastic_transform": _elastic(32, [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                                           (0.1, 0.03, 0.03)]),
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
        "jpeg_compression": [80, 65, 58, 50, 40],
    },
    "imagenet": {
        "gaussian_noise": [.08, .12, 0.18, 0.26, 0.38],
        "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [.03, .06, .09, 0.17, 0.27],
        "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
        "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
        "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        "fog": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
        "brightness": [.1, .2, .3, .4, .5],
        "contrast": [0.4, .3, .2, .1, .05],
        # the authors' "244 should have been 224, but ultimately nothing is incorrect"
        "elastic_transform": _elastic(244, [(2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02),
                                            (0.12, 0.01, 0.02)]),
        "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
        "jpeg_compression": [25, 18, 15, 10, 7],
    },
}
FROST_SCALE = {"cifar": 0.2, "imagenet": 1.0}


def preset_for(height: int, width: int) -> str:
    """``cifar`` (CIFAR-10-C's parameters) for images up to 64 px, ``imagenet`` (ImageNet-C's) above."""
    return "cifar" if max(height, width) <= 64 else "imagenet"


def check_corruptions(names, severities, where: str) -> None:
    """Every name a known corruption and every severity in 1..5 (ConfigError naming the bad one and ``where``)."""
    for n in names:
        if n not in CORRUPTIONS:
            raise ConfigError(f"{where}: {n!r} is not a corruption{did_you_mean(n, CORRUPTIONS)}; "
                              f"allowed: {', '.join(CORRUPTIONS)}")
    for s in severities:
        if s not in SEVERITIES:
            raise ConfigError(f"{where}: severity {s!r} is not one of 1, 2, 3, 4, 5")


# --- helpers ---------------------------------------------------------------------------------------------

def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's ``filters.gaussian`` (channels last, no blur across channels)."""
    sig = (sigma, sigma, 0) if x.ndim == 3 else sigma
    return ndimage.gaussian_filter(x.astype(np.float64), sig, mode=mode, truncate=truncate)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """An anti-aliased disk kernel: the disk's indicator (normalised), Gaussian-blurred (3x3, or 5x5 when the
    radius exceeds 8; OpenCV's GaussianBlur, reflect-101 border)."""
    half, k = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    g = np.exp(-((np.arange(k) - (k - 1) / 2) ** 2) / (2 * alias_blur ** 2))
    g /= g.sum()
    disk = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, g, axis=1, mode="mirror")


def _clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by ``factor`` (bilinear) and crop back to the input's size."""
    h = img.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    zoomed = ndimage.zoom(img[top:top + ch, top:top + ch], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - h) // 2
    return zoomed[trim:trim + h, trim:trim + h]


def _plasma(mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A diamond-square height map in [0, 1] of side ``mapsize`` (a power of two); the random term of each
    step is wibble * U(-wibble, wibble), wibble starting at 100 and divided by ``decay`` per level."""
    m = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)
    while step >= 2:
        half = step // 2
        corners = m[0:mapsize:step, 0:mapsize:step]
        square = corners + np.roll(corners, -1, axis=0)
        square += np.roll(square, -1, axis=1)
        m[half:mapsize:step, half:mapsize:step] = wibbled(square)
        centres, corners = m[half:mapsize:step, half:mapsize:step], m[0:mapsize:step, 0:mapsize:step]
        m[0:mapsize:step, half:mapsize:step] = wibbled(centres + np.roll(centres, 1, axis=0)
                                                       + corners + np.roll(corners, -1, axis=1))
        m[half:mapsize:step, 0:mapsize:step] = wibbled(centres + np.roll(centres, 1, axis=1)
                                                       + corners + np.roll(corners, -1, axis=0))
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


def _motion_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage: sum_i k_i x(p + round(i (cos a, sin a))), k_i ~ exp(-i^2 / 2 sigma^2)
    over i < 2 radius + 1, normalised; edge pixels repeat outside the image. ``x`` is (H, W, C)."""
    width = 2 * radius + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    h, w = x.shape[:2]
    padded = np.pad(x.astype(np.float64), ((width, width), (width, width), (0, 0)), mode="edge")
    out = np.zeros(x.shape, dtype=np.float64)
    a = math.radians(angle)
    for i in range(width):
        dx, dy = math.ceil(i * math.cos(a) - 0.5), math.ceil(i * math.sin(a) - 0.5)
        out += k[i] * padded[width + dy:width + dy + h, width + dx:width + dx + w]
    return out


@functools.lru_cache(maxsize=None)
def _frost_image(index: int, scale: float) -> np.ndarray:
    """Frost photograph ``index`` as float RGB (H, W, 3) in [0, 255], shrunk by ``scale`` (bilinear, no
    anti-aliasing, as OpenCV's INTER_LINEAR)."""
    img = np.asarray(Image.open(FROST_DIR / FROST_FILES[index]).convert("RGB"), dtype=np.float32)
    if scale != 1.0:
        t = torch.from_numpy(img).permute(2, 0, 1)[None]
        t = torch.nn.functional.interpolate(t, scale_factor=scale, mode="bilinear", align_corners=False)
        img = t[0].permute(1, 2, 0).clamp(0, 255).round().numpy()
    return img


# --- the corruptions: (uint8 image (H, W, 3), parameters, generator, preset) -> float image in [0, 255] ----

def gaussian_noise(x, c, rng, preset):
    x = x / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, c, rng, preset):
    return np.clip(rng.poisson(x / 255.0 * c) / c, 0, 1) * 255


def impulse_noise(x, c, rng, preset):
    x = x / 255.0
    flipped = rng.random(x.shape) < c
    salted = rng.random(x.shape) < 0.5
    x = np.where(flipped & salted, 1.0, x)
    return np.where(flipped & ~salted, 0.0, x) * 255


def defocus_blur(x, c, rng, preset):
    kernel = _disk(c[0], c[1])
    x = x / 255.0
    out = np.stack([ndimage.correlate(x[..., d], kernel, mode="mirror") for d in range(x.shape[2])], axis=2)
    return np.clip(out, 0, 1) * 255


def glass_blur(x, c, rng, preset):
    sigma, delta, iterations = c
    x = np.uint8(_gaussian(x / 255.0, sigma) * 255)
    h, w = x.shape[:2]
    for _ in range(iterations):
        hs, ws = range(h - delta, delta, -1), range(w - delta, delta, -1)
        moves = rng.integers(-delta, delta, size=(len(hs) * len(ws), 2))
        j = 0
        for r in hs:
            for q in ws:
                dx, dy = moves[j]
                x[r, q] = x[r + dy, q + dx]  # the authors' "swap" (module docstring)
                j += 1
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def motion_blur(x, c, rng, preset):
    return np.clip(np.rint(_motion_blur(x, c[0], c[1], rng.uniform(-45, 45))), 0, 255)


def zoom_blur(x, c, rng, preset):
    factors = np.arange(*c)
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for f in factors:
        out += _clipped_zoom(x, f)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def snow(x, c, rng, preset):
    x = x.astype(np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = _clipped_zoom(layer[..., None], c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    layer = np.clip(np.rint(_motion_blur(layer, c[4], c[5], rng.uniform(-135, -45))), 0, 255) / 255.0
    gray = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def frost(x, c, rng, preset):
    h, w = x.shape[:2]
    img = _frost_image(int(rng.integers(5)), FROST_SCALE[preset])
    top, left = rng.integers(0, img.shape[0] - h), rng.integers(0, img.shape[1] - w)
    return np.clip(c[0] * x + c[1] * img[top:top + h, left:left + w], 0, 255)


def fog(x, c, rng, preset):
    h, w = x.shape[:2]
    x = x / 255.0
    peak = x.max()
    size = 32 if preset == "cifar" else 256
    size = max(size, 1 << (max(h, w) - 1).bit_length())
    x = x + c[0] * _plasma(size, c[1], rng)[:h, :w, None]
    return np.clip(x * peak / (peak + c[0]), 0, 1) * 255


def brightness(x, c, rng, preset):
    hsv = rgb_to_hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255


def contrast(x, c, rng, preset):
    x = x / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x, c, rng, preset):
    alpha, sigma, affine = c
    img = x.astype(np.float32) / 255.0
    h, w = img.shape[:2]
    centre, half = np.float32((h, w)) // 2, min(h, w) // 3
    src = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    dst = src + rng.uniform(-affine, affine, size=src.shape).astype(np.float32)
    img = _warp_affine(img, src, dst)
    dx = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha)
    dy = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.stack([ndimage.map_coordinates(img[..., d], (rows + dy.astype(np.float32), cols + dx.astype(np.float32)),
                                            order=1, mode="reflect") for d in range(img.shape[2])], axis=2)
    return np.clip(out, 0, 1) * 255


def _warp_affine(img: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """OpenCV's ``warpAffine(img, getAffineTransform(src, dst))``: the affine map taking the three (x, y) points
    ``src`` to ``dst``, bilinear, reflect-101 border."""
    m = np.linalg.solve(np.c_[src, np.ones(3)], dst).T  # (2, 3): [x', y'] = m @ [x, y, 1]
    inv = np.linalg.inv(np.r_[m, [[0, 0, 1]]])[:2]      # output (x, y) -> input (x, y)
    swap = np.array([[0, 1], [1, 0]])
    mat, off = swap @ inv[:, :2] @ swap, swap @ inv[:, 2]  # in (row, col) order
    return np.stack([ndimage.affine_transform(img[..., d], mat, off, order=1, mode="mirror")
                     for d in range(img.shape[2])], axis=2)


def pixelate(x, c, rng, preset):
    h, w = x.shape[:2]
    img = Image.fromarray(x).resize((int(w * c), int(h * c)), Image.BOX)
    return np.asarray(img.resize((w, h), Image.BOX), dtype=np.float64)


def jpeg_compression(x, c, rng, preset):
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=c)
    return np.asarray(Image.open(buf), dtype=np.float64)


FUNCTIONS: dict[str, Callable] = {name: globals()[name] for name in CORRUPTIONS}


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator, preset: str) -> np.ndarray:
    """One uint8 RGB image (H, W, 3) under corruption ``name`` at ``severity`` (1..5), uint8 (truncated)."""
    out = FUNCTIONS[name](image, PARAMS[preset][name][severity - 1], rng, preset)
    return np.asarray(out).astype(np.uint8)


def corrupt_images(x: Tensor, name: str, severity: int, seed: int = 0, start: int = 0) -> Tensor:
    """A uint8 batch (N, 3, H, W) under ``name`` at ``severity``; image i draws from a generator seeded by
    (seed, corruption, severity, start + i), ``start`` being the batch's first index in the test set."""
    check_corruptions([name], [severity], "corrupt_images")
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ConfigError(f"corrupt_images: the corruptions are defined for uint8 RGB images (N, 3, H, W), "
                          f"not {x.dtype} {tuple(x.shape)}")
    preset = preset_for(x.shape[2], x.shape[3])
    k = CORRUPTIONS.index(name)
    imgs = x.permute(0, 2, 3, 1).contiguous().numpy()
    out = [corrupt(img, name, severity, np.random.default_rng([seed, k, severity, start + i]), preset)
           for i, img in enumerate(imgs)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
