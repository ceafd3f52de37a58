"""Box format conversions and simple box arithmetic.

Conventions (see docs/design.md):

- ``xyxy``: ``(x1, y1, x2, y2)``, absolute pixels, continuous coordinates: a box covering pixels
  0..9 is ``(0, 0, 10, 10)`` and its area is ``(x2 - x1) * (y2 - y1)`` (no ``+1``).
- ``xywh``: ``(x1, y1, w, h)``, the COCO format.
- ``cxcywh``: ``(cx, cy, w, h)``, box centre and size.
- YOLO: ``cxcywh`` divided by the image width (x, w) and height (y, h), so in ``[0, 1]``.
- ``cxcywha``: ``(cx, cy, w, h, angle)``, an oriented box; the angle is in **radians** and turns
  the box's width axis from +x towards +y. In image coordinates (y points down) that is
  **clockwise on screen**. ``w`` is measured along ``(cos a, sin a)``, ``h`` along
  ``(-sin a, cos a)``.
- polygon: ``[..., 4, 2]`` vertices ``(x, y)`` in DOTA order: starting at the box's top-left
  corner (for angle 0) and going clockwise on screen, i.e. with a *positive* shoelace signed area
  in image coordinates.

Every function takes a numpy array or a torch tensor (any device, any leading batch dimensions)
and returns the same type on the same device. Floating dtypes are preserved; integer inputs are
promoted to ``float64`` (numpy) or torch's default float dtype, except where a function says
otherwise (``box_area``, ``clip_boxes`` keep the dtype, like torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from danlu.boxes._arrays import _is_tensor, _torch

if TYPE_CHECKING:
    import torch

# torch is imported only by callers that pass tensors (see danlu.boxes._arrays)
Array = TypeVar("Array", np.ndarray, "torch.Tensor")

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")

__all__ = [
    "BOX_FORMATS",
    "box_convert",
    "to_yolo",
    "from_yolo",
    "clip_boxes",
    "box_area",
    "scale_boxes",
    "translate_boxes",
    "cxcywha_to_polygon",
    "polygon_to_cxcywha",
    "polygon_to_xyxy",
]


# --- private array helpers, shared with iou.py and polygon.py ------------------------------------


def _as_array(x: Any) -> np.ndarray | torch.Tensor:
    """A tensor stays a tensor; anything else (lists, scalars, arrays) becomes a numpy array."""
    return x if _is_tensor(x) else np.asarray(x)


def _as_float(x: Any) -> np.ndarray | torch.Tensor:
    """``x`` as an array of a floating dtype; float dtypes are kept, integers promoted."""
    x = _as_array(x)
    if _is_tensor(x):
        return x if x.is_floating_point() else x.to(_torch().get_default_dtype())
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _stack(parts: Sequence[Any], like: Any) -> Any:
    """Stack ``parts`` along a new last axis with the library of ``like``."""
    if _is_tensor(like):
        return _torch().stack(list(parts), dim=-1)
    return np.stack(parts, axis=-1)


def _xp(x: Any) -> Any:
    """The module (``torch`` or ``numpy``) whose functions apply to ``x``.

    Only functions with the same name and positional signature in both are called through it
    (``maximum``, ``minimum``, ``where``, ``arctan2``, ``sqrt``, ``cos``, ``sin``, ``abs``...).
    """
    return _torch() if _is_tensor(x) else np


def _check_last(x: Any, n: int, name: str) -> None:
    if x.ndim < 1 or x.shape[-1] != n:
        raise ValueError(f"{name} must have shape [..., {n}], got {tuple(x.shape)}")


def _check_polygons(x: Any, name: str = "polygons") -> None:
    if x.ndim < 2 or tuple(x.shape[-2:]) != (4, 2):
        raise ValueError(f"{name} must have shape [..., 4, 2], got {tuple(x.shape)}")


def _unbind(x: Any) -> tuple[Any, ...]:
    """Split the last axis into a tuple of views."""
    return tuple(x[..., i] for i in range(x.shape[-1]))


# --- axis-aligned boxes ---------------------------------------------------------------------------


def _to_xyxy(boxes: Any, fmt: str) -> Any:
    a, b, c, d = _unbind(boxes)
    if fmt == "xywh":
        return _stack([a, b, a + c, b + d], boxes)
    if fmt == "cxcywh":
        hw, hh = c / 2, d / 2
        return _stack([a - hw, b - hh, a + hw, b + hh], boxes)
    return boxes


def _from_xyxy(boxes: Any, fmt: str) -> Any:
    x1, y1, x2, y2 = _unbind(boxes)
    if fmt == "xywh":
        return _stack([x1, y1, x2 - x1, y2 - y1], boxes)
    if fmt == "cxcywh":
        return _stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], boxes)
    return boxes


def box_convert(boxes: Array, in_fmt: str, out_fmt: str) -> Array:
    """Convert boxes ``[..., 4]`` between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``.

    All formats are absolute pixels (see the module docstring). Returns a new array of the input's
    type, device and float dtype (integer inputs are promoted to float), even when
    ``in_fmt == out_fmt``.

    >>> box_convert(np.array([[10.0, 20.0, 30.0, 60.0]]), "xyxy", "cxcywh")
    array([[20., 40., 20., 40.]])
    """
    for fmt in (in_fmt, out_fmt):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; expected one of {BOX_FORMATS}")
    boxes = _as_float(boxes)
    _check_last(boxes, 4, "boxes")
    if in_fmt == out_fmt:
        return boxes.clone() if _is_tensor(boxes) else boxes.copy()
    return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


def to_yolo(boxes: Array, width: float, height: float) -> Array:
    """Absolute ``xyxy`` boxes ``[..., 4]`` -> YOLO normalized ``(cx, cy, w, h)``.

    x and w are divided by the image ``width``, y and h by ``height`` (pixels, > 0). Boxes are
    not clipped to the image first; use :func:`clip_boxes` for that.

    >>> to_yolo(np.array([[0.0, 0.0, 50.0, 20.0]]), 100, 40)
    array([[0.25, 0.25, 0.5 , 0.5 ]])
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    cx, cy, w, h = _unbind(box_convert(boxes, "xyxy", "cxcywh"))
    return _stack([cx / width, cy / height, w / width, h / height], cx)


def from_yolo(boxes: Array, width: float, height: float) -> Array:
    """YOLO normalized ``(cx, cy, w, h)`` ``[..., 4]`` -> absolute ``xyxy`` boxes.

    The inverse of :func:`to_yolo` for an image of ``width`` x ``height`` pixels.

    >>> from_yolo(np.array([[0.25, 0.25, 0.5, 0.5]]), 100, 40)
    array([[ 0.,  0., 50., 20.]])
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    boxes = _as_float(boxes)
    _check_last(boxes, 4, "boxes")
    cx, cy, w, h = _unbind(boxes)
    return box_convert(_stack([cx * width, cy * height, w * width, h * height], boxes),
                       "cxcywh", "xyxy")


def clip_boxes(boxes: Array, width: float, height: float) -> Array:
    """Clamp ``xyxy`` boxes ``[..., 4]`` to the image: x into ``[0, width]``, y ``[0, height]``.

    Same as ``torchvision.ops.clip_boxes_to_image(boxes, (height, width))``. The dtype is kept,
    integers too when ``width`` and ``height`` are integers (float sizes promote integer boxes
    to float). A box entirely outside the image becomes a zero-area box on its border; drop
    those with ``box_area(boxes) > 0``.
    """
    boxes = _as_array(boxes)
    _check_last(boxes, 4, "boxes")
    x1, y1, x2, y2 = _unbind(boxes)
    return _stack([x1.clip(0, width), y1.clip(0, height), x2.clip(0, width), y2.clip(0, height)],
                  boxes)


def box_area(boxes: Array) -> Array:
    """Area ``(x2 - x1) * (y2 - y1)`` of ``xyxy`` boxes ``[..., 4]`` -> ``[...]``.

    The dtype is kept (integer boxes give integer areas). A malformed box (``x2 < x1`` or
    ``y2 < y1``) has area 0; torchvision returns a negative number there, and agrees everywhere
    else.

    >>> box_area(np.array([[0.0, 0.0, 10.0, 5.0], [3.0, 3.0, 3.0, 9.0]]))
    array([50.,  0.])
    """
    boxes = _as_array(boxes)
    _check_last(boxes, 4, "boxes")
    x1, y1, x2, y2 = _unbind(boxes)
    return (x2 - x1).clip(min=0) * (y2 - y1).clip(min=0)


def scale_boxes(boxes: Array, sx: float, sy: float) -> Array:
    """Multiply x coordinates of ``xyxy`` boxes ``[..., 4]`` by ``sx`` and y by ``sy``.

    Use it when resizing an image: ``sx = new_width / old_width``. Factors must be positive
    (a negative factor would swap x1 and x2; flip boxes explicitly instead).
    """
    if sx <= 0 or sy <= 0:
        raise ValueError(f"scale factors must be positive, got sx={sx}, sy={sy}")
    boxes = _as_float(boxes)
    _check_last(boxes, 4, "boxes")
    x1, y1, x2, y2 = _unbind(boxes)
    return _stack([x1 * sx, y1 * sy, x2 * sx, y2 * sy], boxes)


def translate_boxes(boxes: Array, dx: float, dy: float) -> Array:
    """Shift ``xyxy`` boxes ``[..., 4]`` by ``dx`` pixels along x and ``dy`` along y.

    Use it to map boxes from a crop or tile at offset ``(ox, oy)`` back to the full image
    (``dx=ox, dy=oy``) or the other way (``dx=-ox, dy=-oy``).
    """
    boxes = _as_float(boxes)
    _check_last(boxes, 4, "boxes")
    x1, y1, x2, y2 = _unbind(boxes)
    return _stack([x1 + dx, y1 + dy, x2 + dx, y2 + dy], boxes)


# --- oriented boxes and polygons ------------------------------------------------------------------


def cxcywha_to_polygon(boxes: Array) -> Array:
    """Oriented boxes ``(cx, cy, w, h, angle)`` ``[..., 5]`` -> polygons ``[..., 4, 2]``.

    ``angle`` is in radians, turning +x towards +y (clockwise on screen, as y points down).
    Vertices come in DOTA order: ``c - u - v, c + u - v, c + u + v, c - u + v`` with
    ``u = w/2 (cos a, sin a)`` and ``v = h/2 (-sin a, cos a)``; for ``a = 0`` that is
    top-left, top-right, bottom-right, bottom-left (positive shoelace area).

    >>> cxcywha_to_polygon(np.array([[5.0, 5.0, 4.0, 2.0, 0.0]]))[0]
    array([[3., 4.],
           [7., 4.],
           [7., 6.],
           [3., 6.]])
    """
    boxes = _as_float(boxes)
    _check_last(boxes, 5, "boxes")
    xp = _xp(boxes)
    cx, cy, w, h, a = _unbind(boxes)
    cos, sin = xp.cos(a), xp.sin(a)
    ux, uy = w / 2 * cos, w / 2 * sin
    vx, vy = -h / 2 * sin, h / 2 * cos
    xs = _stack([cx - ux - vx, cx + ux - vx, cx + ux + vx, cx - ux + vx], boxes)
    ys = _stack([cy - uy - vy, cy + uy - vy, cy + uy + vy, cy - uy + vy], boxes)
    return _stack([xs, ys], boxes)


# The six directions tried for the minimum-area rectangle: the four edges first, so that a
# rectangle keeps its own first edge as width axis (exact round trip), then both diagonals, which
# are hull edges of a non-convex or self-intersecting quadrilateral.
_PAIRS = ((0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3))


def polygon_to_cxcywha(polygons: Array) -> Array:
    """Quadrilaterals ``[..., 4, 2]`` -> oriented boxes ``(cx, cy, w, h, angle)`` ``[..., 5]``.

    Fits the **minimum-area enclosing rectangle** (the one cv2.minAreaRect finds): one of its
    sides lies along an edge of the convex hull, so every edge direction and both diagonals are
    tried and the smallest rectangle kept. For a rectangle that is the rectangle itself.

    Ties go to the earliest direction, edge ``p0 -> p1`` first, so a rectangle in DOTA order
    (positive shoelace area) comes back exactly from :func:`cxcywha_to_polygon`, same start
    vertex: ``angle = atan2`` of its first edge, in ``(-pi, pi]`` radians, ``w = |p1 - p0|``,
    ``h = |p2 - p1|``. A rectangle in the opposite order gives the same box with its vertices
    in DOTA order from another start. The angle is not folded into a smaller range; note that
    ``(w, h, a)``, ``(h, w, a + pi/2)`` and ``(w, h, a + pi)`` describe the same rectangle.
    "Smallest" is up to a relative ``sqrt(eps)`` of the dtype (1.5e-8 in float64), which lets
    rounding noise not decide ties.

    >>> polygon_to_cxcywha(np.array([[[3.0, 4.0], [7.0, 4.0], [7.0, 6.0], [3.0, 6.0]]]))
    array([[5., 5., 4., 2., 0.]])
    """
    polygons = _as_float(polygons)
    _check_polygons(polygons)
    xp = _xp(polygons)
    x, y = polygons[..., 0], polygons[..., 1]
    # Project relative to the first vertex so large image coordinates do not cost precision.
    x0, y0 = x[..., :1], y[..., :1]
    rx, ry = x - x0, y - y0
    cands = []
    for i, j in _PAIRS:
        dx, dy = x[..., j] - x[..., i], y[..., j] - y[..., i]
        norm = xp.sqrt(dx * dx + dy * dy)
        ok = norm > 0
        safe = xp.where(ok, norm, xp.ones_like(norm))
        # A zero-length edge has no direction; fall back to the x axis (still a valid candidate).
        ux = xp.where(ok, dx / safe, xp.ones_like(dx))
        uy = xp.where(ok, dy / safe, xp.zeros_like(dy))
        pu = rx * ux[..., None] + ry * uy[..., None]  # projections onto (ux, uy)
        pv = -rx * uy[..., None] + ry * ux[..., None]  # ... and onto (-uy, ux)
        umin, umax = _amin(pu), _amax(pu)
        vmin, vmax = _amin(pv), _amax(pv)
        cu, cv = (umin + umax) / 2, (vmin + vmax) / 2
        w, h = umax - umin, vmax - vmin
        cx = x0[..., 0] + cu * ux - cv * uy
        cy = y0[..., 0] + cu * uy + cv * ux
        cands.append(_stack([cx, cy, w, h, xp.arctan2(uy, ux), w * h], polygons))
    cand = xp.stack(cands, -2)  # [..., 6, 6]
    area = cand[..., 5]
    # Rounding makes equal rectangles differ in their last bits (more for thin ones); accept the
    # first one within sqrt(machine epsilon) of the smallest, relative to the largest candidate,
    # so the polygon's own first edge wins ties.
    finfo = _torch().finfo if _is_tensor(area) else np.finfo
    eps = finfo(area.dtype).eps
    thresh = _amin(area) + eps**0.5 * _amax(area)
    first = _argmax_first(area <= thresh[..., None])
    best = _take_last2(cand, first)
    return best[..., :5]


def xyxy_to_polygon(boxes: Array) -> Array:
    """Axis-aligned ``xyxy`` boxes ``[..., 4]`` -> their corners ``[..., 4, 2]`` in DOTA order
    (top-left, top-right, bottom-right, bottom-left: positive shoelace area).

    >>> xyxy_to_polygon(np.array([[1.0, 2.0, 5.0, 4.0]]))[0].tolist()
    [[1.0, 2.0], [5.0, 2.0], [5.0, 4.0], [1.0, 4.0]]
    """
    boxes = _as_float(boxes)
    _check_last(boxes, 4, "boxes")
    x1, y1, x2, y2 = _unbind(boxes)
    xs = _stack([x1, x2, x2, x1], boxes)
    ys = _stack([y1, y1, y2, y2], boxes)
    return _stack([xs, ys], boxes)


def polygon_to_xyxy(polygons: Array) -> Array:
    """Enclosing axis-aligned ``xyxy`` boxes ``[..., 4]`` of polygons ``[..., K, 2]``.

    >>> polygon_to_xyxy(np.array([[[5.0, 0.0], [10.0, 5.0], [5.0, 10.0], [0.0, 5.0]]]))
    array([[ 0.,  0., 10., 10.]])
    """
    polygons = _as_float(polygons)
    if polygons.ndim < 2 or polygons.shape[-1] != 2:
        raise ValueError(f"polygons must have shape [..., K, 2], got {tuple(polygons.shape)}")
    x, y = polygons[..., 0], polygons[..., 1]
    return _stack([_amin(x), _amin(y), _amax(x), _amax(y)], polygons)


def _amin(x: Any) -> Any:
    """Minimum over the last axis."""
    return x.amin(dim=-1) if _is_tensor(x) else x.min(axis=-1)


def _amax(x: Any) -> Any:
    """Maximum over the last axis."""
    return x.amax(dim=-1) if _is_tensor(x) else x.max(axis=-1)


def _argmax_first(mask: Any) -> Any:
    """Index of the first True along the last axis (both libraries return the first maximum)."""
    if _is_tensor(mask):
        return mask.to(_torch().uint8).argmax(dim=-1)
    return mask.argmax(axis=-1)


def _take_last2(x: Any, idx: Any) -> Any:
    """``x[..., idx, :]`` with one index per leading position: ``[..., K, C]`` -> ``[..., C]``."""
    if _is_tensor(x):
        return _torch().take_along_dim(x, idx[..., None, None], dim=-2)[..., 0, :]
    return np.take_along_axis(x, idx[..., None, None], axis=-2)[..., 0, :]

