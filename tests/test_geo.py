"""GeoTIFF georeferencing (danlu.infer.geo) and detections as GeoJSON.

GeoTIFFs are written with tifffile's ``extratags`` (the GeoTIFF tags by number) and read back
through ``open_raster``; GeoJSON is checked against a hand-written schema (jsonschema) and
its polygons with shapely.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import shapely
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from danlu.infer.geo import GeoTransform, detections_to_geojson, geo_from_tiff, geo_keys
from danlu.infer.raster import TiffRaster, WholeImageRaster, open_raster
from danlu.structures import Detections

SCALE, TIEPOINT, TRANSFORM, GEOKEYS = 33550, 33922, 34264, 34735


def geokeys(**keys: int) -> tuple[int, ...]:
    """A GeoKeyDirectoryTag of SHORT keys: ``geokeys(k1025=1, k3072=32633)``."""
    items = sorted((int(k[1:]), v) for k, v in keys.items())
    out = [1, 1, 0, len(items)]
    for key, value in items:
        out += [key, 0, 1, value]
    return tuple(out)


def write_geotiff(path: Path, *, scale=None, tie=None, matrix=None, keys=None,
                  data: np.ndarray | None = None, **options) -> Path:
    tags = []
    if scale is not None:
        tags.append((SCALE, "d", 3, tuple(scale), False))
    if tie is not None:
        tags.append((TIEPOINT, "d", len(tie), tuple(tie), False))
    if matrix is not None:
        tags.append((TRANSFORM, "d", 16, tuple(matrix), False))
    if keys is not None:
        tags.append((GEOKEYS, "H", len(keys), keys, False))
    if data is None:
        data = np.zeros((40, 60, 3), np.uint8)
    tifffile.imwrite(path, data, extratags=tags, **options)
    return path


UTM = {"scale": (0.5, 0.25, 0.0), "tie": (0, 0, 0, 500000.0, 4200000.0, 0),
       "keys": geokeys(k1024=1, k1025=1, k3072=32633)}


def test_pixel_scale_and_tiepoint_map_known_pixels(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "utm.tif", tile=(16, 16), **UTM)
    with open_raster(path) as r:
        assert isinstance(r, TiffRaster)
        geo = r.geo
    assert geo == GeoTransform(0.5, 0.0, 500000.0, 0.0, -0.25, 4200000.0, epsg=32633)
    x, y = geo.apply(np.array([0, 60, 10.5]), np.array([0, 40, 2]))
    np.testing.assert_allclose(x, [500000.0, 500030.0, 500005.25])
    np.testing.assert_allclose(y, [4200000.0, 4199990.0, 4199999.5])
    assert geo.pixel_area == pytest.approx(0.125)


def test_tiepoint_away_from_the_origin(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "t.tif", scale=(2.0, 3.0, 0.0),
                         tie=(10, 20, 0, 1000.0, 5000.0, 0), keys=geokeys(k2048=4326))
    geo = open_raster(path).geo
    x, y = geo.apply(np.array([10.0, 0.0]), np.array([20.0, 0.0]))
    np.testing.assert_allclose(x, [1000.0, 980.0])
    np.testing.assert_allclose(y, [5000.0, 5060.0])
    assert geo.epsg == 4326  # GeographicTypeGeoKey, no projected CRS


def test_pixel_is_point_shifts_half_a_pixel(tmp_path: Path) -> None:
    area = write_geotiff(tmp_path / "area.tif", **UTM)
    point = write_geotiff(tmp_path / "point.tif", scale=UTM["scale"], tie=UTM["tie"],
                          keys=geokeys(k1025=2, k3072=32633))
    a, p = open_raster(area).geo, open_raster(point).geo
    # the tiepoint names pixel (0, 0)'s centre, so the corner lies half a pixel up-left
    assert (p.c, p.f) == (a.c - 0.25, a.f + 0.125)
    x, y = p.apply(np.array([0.5]), np.array([0.5]))
    assert (x[0], y[0]) == (500000.0, 4200000.0)


def test_model_transformation_with_rotation(tmp_path: Path) -> None:
    matrix = (0.8, 0.6, 0, 100.0,
              0.6, -0.8, 0, 200.0,
              0, 0, 0, 0,
              0, 0, 0, 1)
    path = write_geotiff(tmp_path / "rot.tif", matrix=matrix, keys=geokeys(k3072=3857))
    geo = open_raster(path).geo
    assert geo == GeoTransform(0.8, 0.6, 100.0, 0.6, -0.8, 200.0, epsg=3857)
    x, y = geo.apply(np.array([10.0]), np.array([5.0]))
    assert (x[0], y[0]) == pytest.approx((100 + 8 + 3, 200 + 6 - 4))


def test_no_or_incomplete_georeferencing(tmp_path: Path) -> None:
    plain = write_geotiff(tmp_path / "plain.tif")
    assert open_raster(plain).geo is None
    gcps = write_geotiff(tmp_path / "gcps.tif", tie=(0, 0, 0, 1, 2, 0, 5, 5, 0, 3, 4, 0))
    assert open_raster(gcps).geo is None  # tiepoints without a scale: GCPs, no affine
    user = write_geotiff(tmp_path / "user.tif", scale=(1, 1, 0), tie=(0, 0, 0, 0, 0, 0),
                         keys=geokeys(k3072=32767))
    assert open_raster(user).geo.epsg is None  # user-defined CRS


def test_geo_keys_reads_the_directory(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "k.tif", **UTM)
    with tifffile.TiffFile(path) as tif:
        assert geo_keys(tif.pages[0]) == {1024: 1, 1025: 1, 3072: 32633}
        assert geo_from_tiff(tif.pages[0]).epsg == 32633


def test_a_tiff_decoded_whole_keeps_its_transform(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((30, 20)).astype(np.float32)
    path = write_geotiff(tmp_path / "dem.tif", data=data, **UTM)
    with open_raster(path) as r:
        assert isinstance(r, WholeImageRaster)
        assert r.geo is not None and r.geo.epsg == 32633


def test_from_gdal_order() -> None:
    geo = GeoTransform.from_gdal((500000.0, 0.5, 0.0, 4200000.0, 0.0, -0.5), epsg=32633)
    assert geo == GeoTransform(0.5, 0.0, 500000.0, 0.0, -0.5, 4200000.0, 32633)


# ----------------------------------------------------------------------------- GeoJSON

_POSITION = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}}
SCHEMA = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "crs": {"type": "object", "required": ["type", "properties"],
                "properties": {"type": {"const": "name"},
                               "properties": {"type": "object", "required": ["name"],
                                              "properties": {"name": {
                                                  "type": "string",
                                                  "pattern": r"^urn:ogc:def:crs:EPSG::\d+$"}}}}},
        "features": {"type": "array", "items": {
            "type": "object",
            "required": ["type", "geometry", "properties"],
            "properties": {
                "type": {"const": "Feature"},
                "geometry": {"type": "object", "required": ["type", "coordinates"],
                             "properties": {"type": {"const": "Polygon"}, "coordinates": {
                                 "type": "array", "minItems": 1, "maxItems": 1,
                                 "items": {"type": "array", "minItems": 5, "maxItems": 5,
                                           "items": _POSITION}}}},
                "properties": {"type": "object", "required": ["class", "label", "score"],
                               "properties": {"class": {"type": "string"},
                                              "label": {"type": "integer"},
                                              "score": {"type": ["number", "null"]},
                                              "image": {"type": "string"}}},
            }}},
    },
}


def _polygons(fc: dict) -> list[Polygon]:
    return [Polygon(f["geometry"]["coordinates"][0]) for f in fc["features"]]


def _boxes() -> Detections:
    return Detections(np.array([[0, 0, 10, 4], [20.5, 8, 30, 39.5], [1, 1, 2, 2]]),
                      np.array([0, 1, 7]), scores=np.array([0.9, 0.5, 0.25]))


def test_geojson_of_boxes_on_a_utm_raster() -> None:
    geo = GeoTransform(0.5, 0.0, 500000.0, 0.0, -0.25, 4200000.0, epsg=32633)
    det = _boxes()
    fc = detections_to_geojson(det, ["car", "ship"], geo, image_name="scene.tif")
    jsonschema.validate(fc, SCHEMA)
    json.loads(json.dumps(fc))  # plain JSON types only
    assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    props = [f["properties"] for f in fc["features"]]
    assert [p["class"] for p in props] == ["car", "ship", "7"]
    assert [p["label"] for p in props] == [0, 1, 7]
    assert [p["score"] for p in props] == [0.9, 0.5, 0.25]
    assert {p["image"] for p in props} == {"scene.tif"}
    for poly, ring, area in zip(_polygons(fc), fc["features"], det.area, strict=True):
        coords = ring["geometry"]["coordinates"][0]
        assert coords[0] == coords[-1]
        assert poly.is_valid and poly.exterior.is_ccw
        assert poly.area == pytest.approx(area * geo.pixel_area)
    assert _polygons(fc)[0].bounds == (500000.0, 4199999.0, 500005.0, 4200000.0)


def test_geojson_without_geo_is_in_pixels_and_has_no_crs() -> None:
    det = Detections(np.array([[1, 2, 5, 10]]), np.array([0]))
    fc = detections_to_geojson(det, ["a"], None)
    jsonschema.validate(fc, SCHEMA)
    assert "crs" not in fc
    assert fc["features"][0]["properties"] == {"class": "a", "label": 0, "score": None}
    assert _polygons(fc)[0].bounds == (1.0, 2.0, 5.0, 10.0)
    assert "crs" not in detections_to_geojson(det, ["a"], GeoTransform(1, 0, 0, 0, -1, 0))


def test_geojson_uses_the_oriented_polygons() -> None:
    poly = np.array([[[10, 0], [20, 10], [10, 20], [0, 10]]], np.float32)  # a diamond
    det = Detections(None, np.array([0]), scores=np.array([0.7]), polygons=poly)
    geo = GeoTransform(2.0, 0.0, 100.0, 0.0, -2.0, 50.0, epsg=3857)
    fc = detections_to_geojson(det, ["x"], geo)
    jsonschema.validate(fc, SCHEMA)
    (shape,) = _polygons(fc)
    assert shape.is_valid and shape.exterior.is_ccw
    assert shape.area == pytest.approx(200.0 * 4)  # the diamond, not its 400 px box
    assert shapely.equals(shape, Polygon([(120, 50), (140, 30), (120, 10), (100, 30)]))


def test_geojson_of_no_detections() -> None:
    fc = detections_to_geojson(Detections.empty(with_scores=True), ["a"], None)
    assert fc == {"type": "FeatureCollection", "features": []}


@settings(max_examples=30, deadline=None)
@given(st.floats(0.01, 100), st.floats(0.01, 100), st.floats(-3.0, 3.0), st.booleans(),
       st.lists(st.tuples(st.floats(0, 500), st.floats(0, 500), st.floats(0.5, 100),
                          st.floats(0.5, 100)), min_size=1, max_size=5))
def test_geojson_areas_scale_by_the_pixel_area(sx: float, sy: float, angle: float,
                                               north_up: bool, boxes: list) -> None:
    cos, sin = (1.0, 0.0) if north_up else (np.cos(angle), np.sin(angle))
    geo = GeoTransform(sx * cos, -sy * sin, 1e5, sx * sin, -sy * cos, 5e6, epsg=32610)
    xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes])
    det = Detections(xyxy, np.zeros(len(boxes), np.int64))
    fc = detections_to_geojson(det, ["a"], geo)
    jsonschema.validate(fc, SCHEMA)
    for shape, area in zip(_polygons(fc), det.area, strict=True):
        assert shape.is_valid and shape.exterior.is_ccw
        assert shape.area == pytest.approx(float(area) * geo.pixel_area, rel=1e-6)
