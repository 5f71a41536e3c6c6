"""Image transforms on the host (uint8 in, uint8 out), and CLIP's mean and std.

Host side, per image: `random_resized_crop` for training (CLOOB: scale (0.9, 1),
aspect (3/4, 4/3), bicubic) and `resize_center_crop` for evaluation (bicubic
resize of the short side, centre crop). Both return uint8 [S, S, 3]; batches stay
uint8 until they are on the device, where `models.inputs.normalize` applies CLIP's
mean/std (4x less host-to-device traffic than float32). Encoded images take the fused
path instead (`records.decode_crop`): the box (`random_resized_crop_box`,
`center_crop_box`) is drawn from the header's size, and JPEGs are resized by
OpenCV (`resize_box_fast`) when it is installed.

All randomness comes from the `np.random.Generator` passed in, which the
pipeline derives from (seed, record position): augmentations are reproducible
and a resumed pipeline produces the same crops.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TRAIN_SCALE = (0.9, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)


def _as_pil(image) -> Image.Image:
  if isinstance(image, Image.Image):
    return image if image.mode == "RGB" else image.convert("RGB")
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
  return Image.fromarray(image)


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=TRAIN_SCALE, ratio=TRAIN_RATIO,
                            attempts: int = 10) -> tuple[int, int, int, int]:
  """Samples a crop (top, left, crop_height, crop_width) as torchvision does.

  The crop covers a uniform fraction in `scale` of the image area and has an
  aspect ratio (w/h) log-uniform in `ratio`; after `attempts` failures it falls
  back to the largest centred crop with the ratio clamped into `ratio`.
  """
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(attempts):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image, size: int, rng: np.random.Generator, *,
                        scale=TRAIN_SCALE, ratio=TRAIN_RATIO) -> np.ndarray:
  """Training crop: uint8 [H, W, 3] (or a PIL image) -> uint8 [size, size, 3]."""
  img = _as_pil(image)
  top, left, h, w = random_resized_crop_box(img.height, img.width, rng, scale, ratio)
  # One resample from the crop box: no intermediate crop copy.
  out = img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
  return np.asarray(out)


def center_crop_box(height: int, width: int) -> tuple[float, float, int, int]:
  """The centred square (top, left, side, side) that `resize_center_crop` keeps."""
  side = min(height, width)
  return (height - side) / 2, (width - side) / 2, side, side


def resize_box_fast(image: np.ndarray, box, size: int) -> np.ndarray:
  """OpenCV's counterpart of Pillow's bicubic resize of a box: uint8 [size, size, 3].

  The box (top, left, height, width) of uint8 [H, W, 3] is rounded to whole
  pixels, resized bilinearly to 2 * size and averaged over 2 x 2 blocks (OpenCV's
  fast path): an antialiased downscale, within about 0.5 in mean of Pillow's
  (tests/records_test.py) at a fraction of its cost. A box over 3 * size (rare
  after a DCT-scaled decode) is area-averaged directly, which is slower.
  """
  import cv2  # pylint: disable=g-import-not-at-top
  top, left, h, w = box
  t, l = int(math.floor(top + 0.5)), int(math.floor(left + 0.5))
  b = min(max(int(math.floor(top + h + 0.5)), t + 1), image.shape[0])
  r = min(max(int(math.floor(left + w + 0.5)), l + 1), image.shape[1])
  crop = image[t:b, l:r]
  if crop.shape[:2] == (size, size):
    return np.array(crop)
  if max(crop.shape[:2]) > 3 * size:
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
  big = cv2.resize(crop, (2 * size, 2 * size), interpolation=cv2.INTER_LINEAR)
  return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def resize_center_crop(image, size: int) -> np.ndarray:
  """Eval transform: bicubic resize of the short side to `size`, centre crop.

  uint8 [H, W, 3] (or a PIL image) -> uint8 [size, size, 3]. Done as one
  resample of the centred square, which is the same mapping.
  """
  if isinstance(image, np.ndarray) and image.shape == (size, size, 3):
    return image
  img = _as_pil(image)
  w, h = img.size
  if w == size and h == size:
    return np.asarray(img)
  top, left, side, _ = center_crop_box(h, w)
  out = img.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
  return np.asarray(out)
