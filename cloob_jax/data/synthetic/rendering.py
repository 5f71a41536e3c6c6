"""Drawing scenes of the synthetic world: every shape is a signed distance table.

`render(scene, image_size)` looks up each pixel's distance to each object's outline in its
shape's table (`_sdf_tables`, built once per process) and turns it into coverage: edges are
anti-aliased over about one pixel. It draws no random numbers: the jitter is in the scene.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

from cloob_jax.data.synthetic import scenes
from cloob_jax.data.synthetic import world

# The table covers [-1.8, 1.8]^2 in units of the object radius: wide enough for an object's
# tilted drawing box (+-_REACH radii) except at tiny radii, where lookups clip to the border.
_SDF_HALF_WIDTH = 1.8
_SDF_RES = 192
_REACH = 1.25  # half-side of an object's drawing box, in radii; shapes fit in ~1.05


def _polygon_sdf(points: np.ndarray, vertices: Sequence[tuple[float, float]]) -> np.ndarray:
  """Signed distance to a closed polygon (negative inside): points [n, 2] -> [n]."""
  v = np.asarray(vertices, np.float64)
  e = np.roll(v, -1, axis=0) - v  # [m, 2] edge vectors
  w = points[:, None, :] - v[None]  # [n, m, 2]
  t = np.clip((w * e).sum(-1) / (e * e).sum(-1), 0.0, 1.0)
  dist = np.sqrt(((w - t[..., None] * e) ** 2).sum(-1).min(-1))
  y = points[:, 1:2]
  v0y, v1y = v[None, :, 1], np.roll(v, -1, axis=0)[None, :, 1]
  crosses = (v0y <= y) != (v1y <= y)
  with np.errstate(divide="ignore", invalid="ignore"):
    x_at = v[None, :, 0] + (y - v0y) / (v1y - v0y) * e[None, :, 0]
  inside = (crosses & (points[:, 0:1] < x_at)).sum(-1) % 2 == 1
  return np.where(inside, -dist, dist)


def _shape_vertices(name: str) -> list[tuple[float, float]]:
  """Polygon of a shape, in units of its radius, y pointing down."""
  if name == "square":
    h = 0.72
    return [(-h, -h), (h, -h), (h, h), (-h, h)]
  if name == "triangle":  # equilateral, pointing up, shifted down to centre its bounding box
    return [(1.02 * math.cos(a), 1.02 * math.sin(a) + 0.26)
            for a in np.radians([-90, 30, 150])]
  if name == "star":  # five points, alternating outer and inner radius
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    angles = np.radians(-90 + 36 * np.arange(10))
    return list(zip(radii * np.cos(angles), radii * np.sin(angles) + 0.08))
  if name == "cross":
    a, b = 0.88, 0.3
    return [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
            (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
  if name == "diamond":
    return [(0.0, -0.95), (0.62, 0.0), (0.0, 0.95), (-0.62, 0.0)]
  if name == "heart":  # the classic parametric heart, flipped so the tip points down
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return list(zip(x * 0.9 / 16, (y - 2.5) * 0.9 / 16))
  raise ValueError(name)


@functools.cache
def _sdf_tables() -> np.ndarray:
  """Signed distance of every shape on a grid: float32 [len(SHAPES), RES, RES], radius units."""
  u = np.linspace(-_SDF_HALF_WIDTH, _SDF_HALF_WIDTH, _SDF_RES)
  yy, xx = np.meshgrid(u, u, indexing="ij")
  points = np.stack([xx.ravel(), yy.ravel()], -1)
  norm = np.hypot(xx, yy)
  tables = []
  for name in world.SHAPES:
    if name == "circle":
      sdf = norm - 0.82
    elif name == "ring":
      sdf = np.abs(norm - 0.66) - 0.21
    else:
      sdf = _polygon_sdf(points, _shape_vertices(name)).reshape(xx.shape)
    tables.append(sdf)
  return np.stack(tables).astype(np.float32)



def render(scene: scenes.Scene, image_size: int = 64) -> np.ndarray:
  """Draws a scene with anti-aliased edges: uint8 [image_size, image_size, 3]."""
  s = image_size
  image = np.full((s, s, 3), scene.background_level, np.float32)
  tables = _sdf_tables()
  to_table = (_SDF_RES - 1) / (2 * _SDF_HALF_WIDTH)
  for obj in scene.objects:
    r = obj.radius * s
    cx, cy = obj.centre[0] * s, obj.centre[1] * s
    reach = r * _REACH
    x0, x1 = max(int(cx - reach), 0), min(int(math.ceil(cx + reach)), s)
    y0, y1 = max(int(cy - reach), 0), min(int(math.ceil(cy + reach)), s)
    # Table coordinates of pixel centres, rotated by -angle: u along x, v along y.
    k = to_table / r
    cos, sin = math.cos(obj.angle) * k, math.sin(obj.angle) * k
    dx = np.arange(x0, x1, dtype=np.float32) + (0.5 - cx)
    dy = np.arange(y0, y1, dtype=np.float32) + (0.5 - cy)
    offset = _SDF_HALF_WIDTH * to_table + 0.5  # +0.5: truncation below rounds to nearest
    u = (dx * cos + offset)[None, :] + (dy * sin)[:, None]
    v = (dy * cos + offset)[:, None] - (dx * sin)[None, :]
    # In place: np.clip's Python wrapper costs more than the arithmetic on these tiny arrays.
    iu = np.minimum(np.maximum(u, 0, out=u), _SDF_RES - 1, out=u).astype(np.intp)
    iv = np.minimum(np.maximum(v, 0, out=v), _SDF_RES - 1, out=v).astype(np.intp)
    # Coverage of a pixel ~ 0.5 - signed distance in pixels: a one-pixel anti-aliased edge.
    alpha = tables[obj.shape][iv, iu]
    alpha *= -r
    alpha += 0.5
    np.minimum(np.maximum(alpha, 0.0, out=alpha), 1.0, out=alpha)
    patch = image[y0:y1, x0:x1]
    patch += alpha[..., None] * (np.asarray(obj.rgb, np.float32) - patch)
  image += 0.5  # every value is already within [0, 255]: round, no clip
  return image.astype(np.uint8)
