"""Georeferencing of GeoTIFF rasters and detections as GeoJSON.

Conventions:

* **Pixel coordinates** are danlu's continuous ones: ``(col, row) = (0, 0)`` is the top-left
  *corner* of the top-left pixel, the centre of pixel ``(i, j)`` is ``(i + 0.5, j + 0.5)``,
  and a box ``xyxy`` covers ``x1 <= col <= x2``, ``y1 <= row <= y2``.
* A :class:`GeoTransform` is the affine map of those coordinates to the raster's model (map)
  coordinates: ``x = a * col + b * row + c``, ``y = d * col + e * row + f`` (GDAL's
  geotransform is ``(c, a, b, f, d, e)``). A north-up image has ``b = d = 0`` and ``e < 0``.
* GeoTIFF's raster type (``GTRasterTypeGeoKey`` 1025): *PixelIsArea* (1, the default) ties
  raster coordinates to pixel corners, which is danlu's convention already; *PixelIsPoint*
  (2) ties them to pixel centres, so :func:`geo_from_tiff` shifts the origin by half a pixel
  (``c -= (a + b) / 2``, ``f -= (d + e) / 2``), as GDAL does.
* The CRS is an EPSG code (``ProjectedCSTypeGeoKey`` 3072, else ``GeographicTypeGeoKey``
  2048), or None when the file has none or a user-defined one (32767).

GeoJSON: RFC 7946 defines coordinates as WGS 84 longitude / latitude only. When the raster's
CRS is another EPSG code, :func:`detections_to_geojson` writes the coordinates in that CRS and
names it with the legacy (GeoJSON 2008) ``crs`` member, which GDAL, QGIS and geopandas read;
reproject the file (e.g. ``ogr2ogr -t_srs EPSG:4326``) where strict RFC 7946 is required.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Detections
    >>> geo = GeoTransform(0.5, 0.0, 500000.0, 0.0, -0.5, 4200000.0, epsg=32633)
    >>> geo.apply(np.array([0.0, 10.0]), np.array([0.0, 4.0]))
    (array([500000., 500005.]), array([4200000., 4199998.]))
    >>> det = Detections(np.array([[0, 0, 10, 4]]), np.array([1]), scores=np.array([0.9]))
    >>> fc = detections_to_geojson(det, ["car", "ship"], geo)
    >>> fc["features"][0]["properties"], fc["crs"]["properties"]["name"]
    ({'class': 'ship', 'label': 1, 'score': 0.9}, 'urn:ogc:def:crs:EPSG::32633')
    >>> fc["features"][0]["geometry"]["coordinates"][0][:2]
    [[500000.0, 4200000.0], [500000.0, 4199998.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from danlu.structures import Detections

MODEL_PIXEL_SCALE = 33550
MODEL_TIEPOINT = 33922
MODEL_TRANSFORMATION = 34264
GEO_KEY_DIRECTORY = 34735
_RASTER_TYPE_KEY = 1025
_PROJECTED_CRS_KEY = 3072
_GEOGRAPHIC_CRS_KEY = 2048
_PIXEL_IS_POINT = 2
_USER_DEFINED = 32767


@dataclass(frozen=True)
class GeoTransform:
    """Affine map of pixel coordinates ``(col, row)`` (corners; see the module docstring) to
    model coordinates: ``x = a * col + b * row + c``, ``y = d * col + e * row + f``.

    Attributes:
        a, b, c, d, e, f: the affine coefficients.
        epsg: the EPSG code of the model coordinates, or None when unknown.
    """

    a: float
    b: float
    c: float
    d: float
    e: float
    f: float
    epsg: int | None = None

    @classmethod
    def from_gdal(cls, gt: Sequence[float], epsg: int | None = None) -> GeoTransform:
        """From GDAL's / rasterio's geotransform order ``(c, a, b, f, d, e)``."""
        c, a, b, f, d, e = (float(v) for v in gt)
        return cls(a, b, c, d, e, f, epsg)

    def apply(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model coordinates ``(x, y)`` (float64 arrays) of pixel coordinates ``(col, row)``."""
        col = np.asarray(col, np.float64)
        row = np.asarray(row, np.float64)
        return self.a * col + self.b * row + self.c, self.d * col + self.e * row + self.f

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in model units squared (``|a * e - b * d|``)."""
        return abs(self.a * self.e - self.b * self.d)


def _tag_value(page: Any, code: int) -> Any:
    tag = page.tags.get(code)
    return None if tag is None else tag.value


def geo_keys(page: Any) -> dict[int, int]:
    """The SHORT-valued keys of a page's ``GeoKeyDirectoryTag`` (34735), ``{key_id: value}``.

    Keys whose value lives in another tag (doubles, ASCII) are left out; an absent or malformed
    directory gives ``{}``.
    """
    raw = _tag_value(page, GEO_KEY_DIRECTORY)
    if raw is None:
        return {}
    values = [int(v) for v in np.asarray(raw).ravel()]
    if len(values) < 4:
        return {}
    count = min(values[3], (len(values) - 4) // 4)
    keys = {}
    for k in range(count):
        key_id, location, _n, value = values[4 + 4 * k: 8 + 4 * k]
        if location == 0:
            keys[key_id] = value
    return keys


def _affine(page: Any) -> tuple[float, float, float, float, float, float] | None:
    matrix = _tag_value(page, MODEL_TRANSFORMATION)
    if matrix is not None and len(matrix) >= 8:
        m = [float(v) for v in matrix]
        return m[0], m[1], m[3], m[4], m[5], m[7]
    scale = _tag_value(page, MODEL_PIXEL_SCALE)
    tie = _tag_value(page, MODEL_TIEPOINT)
    if scale is None or tie is None or len(scale) < 2 or len(tie) < 6:
        return None  # several tiepoints without a scale are ground control points: no affine
    sx, sy = float(scale[0]), float(scale[1])
    i, j, _k, x, y = (float(v) for v in tie[:5])
    return sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy


def geo_from_tiff(page: Any) -> GeoTransform | None:
    """The :class:`GeoTransform` of a ``tifffile.TiffPage``, or None when it is not a GeoTIFF.

    Reads ``ModelTransformationTag`` (34264) or ``ModelPixelScaleTag`` (33550) with the first
    ``ModelTiepointTag`` (33922), the raster type and the EPSG code from
    ``GeoKeyDirectoryTag`` (34735). A PixelIsPoint raster is shifted by half a pixel so the
    transform maps pixel corners (see the module docstring).
    """
    affine = _affine(page)
    if affine is None:
        return None
    a, b, c, d, e, f = affine
    keys = geo_keys(page)
    if keys.get(_RASTER_TYPE_KEY) == _PIXEL_IS_POINT:
        c -= 0.5 * (a + b)
        f -= 0.5 * (d + e)
    epsg = keys.get(_PROJECTED_CRS_KEY) or keys.get(_GEOGRAPHIC_CRS_KEY)
    if epsg is not None and not 0 < epsg < _USER_DEFINED:
        epsg = None
    return GeoTransform(a, b, c, d, e, f, epsg)


def _rings(det: Detections) -> np.ndarray:
    """``[N, 4, 2]`` float64 pixel corners: the polygons, else the boxes' corners in the order
    (x1, y1), (x1, y2), (x2, y2), (x2, y1)."""
    if det.polygons is not None:
        return det.polygons.astype(np.float64)
    x1, y1, x2, y2 = det.xyxy.astype(np.float64).T
    return np.stack([np.stack([x1, y1], -1), np.stack([x1, y2], -1),
                     np.stack([x2, y2], -1), np.stack([x2, y1], -1)], axis=1)


def _counterclockwise(rings: np.ndarray) -> np.ndarray:
    """``rings`` with each ring reversed where its signed (shoelace) area is negative, so every
    exterior ring follows the right-hand rule of RFC 7946 (section 3.1.6)."""
    x, y = rings[..., 0], rings[..., 1]
    signed = (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)
    out = rings.copy()
    out[signed < 0] = out[signed < 0, ::-1]
    return out


def detections_to_geojson(det: Detections, class_names: Sequence[str],
                          geo: GeoTransform | None,
                          image_name: str | None = None) -> dict[str, Any]:
    """A GeoJSON ``FeatureCollection`` with one ``Polygon`` feature per detection.

    Args:
        det: the detections, in pixel coordinates of the raster.
        class_names: names indexed by ``det.labels`` (a label out of range is named by its
            number).
        geo: the raster's transform; None writes pixel coordinates (``[col, row]``).
        image_name: when given, every feature's properties carry it as ``"image"``.

    Returns:
        ``{"type": "FeatureCollection", "features": [...]}``; each feature's geometry is the
        detection's polygon (``det.polygons``) or its box's 4 corners, as a closed ring,
        counter-clockwise in the output coordinates; its properties are ``{"class", "label",
        "score"}`` (``score`` rounded to 6 decimals, None for ground truth). With an EPSG
        code in ``geo`` the legacy ``crs`` member names it (see the module docstring).
    """
    rings = _rings(det)
    if geo is not None:
        x, y = geo.apply(rings[..., 0], rings[..., 1])
        rings = np.stack([x, y], axis=-1)
    rings = _counterclockwise(rings)
    rings = np.concatenate([rings, rings[:, :1]], axis=1)  # close each ring
    labels = det.labels.tolist()
    scores = None if det.scores is None else det.scores.astype(np.float64).tolist()
    features = []
    for i, label in enumerate(labels):
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        props: dict[str, Any] = {"class": name, "label": int(label),
                                 "score": None if scores is None else round(scores[i], 6)}
        if image_name is not None:
            props["image"] = image_name
        features.append({"type": "Feature", "properties": props,
                         "geometry": {"type": "Polygon", "coordinates": [rings[i].tolist()]}})
    out: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if geo is not None and geo.epsg is not None:
        out["crs"] = {"type": "name",
                      "properties": {"name": f"urn:ogc:def:crs:EPSG::{geo.epsg}"}}
    return out


__all__ = ["GeoTransform", "geo_from_tiff", "geo_keys", "detections_to_geojson"]
