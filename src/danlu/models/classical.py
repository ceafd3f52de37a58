"""Classical detectors: the Haar cascades OpenCV ships, as danlu models.

A Haar cascade (Viola and Jones, 2001) slides a fixed window (e.g. 24x24 pixels for the frontal
face) over an image pyramid and runs a chain of boosted stages of Haar-like features on each
window; a window that passes every stage is a hit, and neighbouring hits are grouped into one
box. OpenCV ships trained cascades as XML files (``cv2.data.haarcascades``); each one is a
danlu model named ``haar:NAME``, e.g. ``haar:frontalface_default``, or ``haar:/path/to/x.xml``
for a cascade of one's own.

:class:`HaarCascade` is a :class:`~danlu.infer.backend.Backend`: the
:class:`~danlu.infer.predictor.Predictor` hands it each image at its own size (``transform`` is
None) and applies its post-processing (hard NMS) to what it returns.

Conventions: boxes are ``xyxy`` absolute pixels of the input image, float32 (OpenCV's integer
``x, y, w, h`` become ``x, y, x + w, y + h``); labels are all 0 (one class per cascade).
The score of a box is ``n / (n + 10)`` (:func:`neighbour_score`), where ``n`` is the number of
raw window hits OpenCV grouped into it (``detectMultiScale2``'s ``numDetections``): in (0, 1),
0.5 at 10 hits, strictly increasing in ``n``. On the photographs scikit-image ships it ranks
real faces above false hits at least as well as the last stage's sum (``detectMultiScale3``'s
``levelWeights``), whose scale differs between cascades (docs/classical.md has the numbers).

The class name of each shipped cascade (:func:`cascade_class_name`):

========================================================  ================
cascade                                                   class name
========================================================  ================
``frontalface_default`` / ``_alt`` / ``_alt2`` /           ``face``
``_alt_tree``, ``profileface``
``eye``, ``eye_tree_eyeglasses``, ``lefteye_2splits``,     ``eye``
``righteye_2splits``
``fullbody``                                              ``person``
``upperbody`` / ``lowerbody``                             ``upper body`` / ``lower body``
``smile``                                                 ``smile``
``frontalcatface``, ``frontalcatface_extended``           ``cat face``
``license_plate_rus_16stages``, ``russian_plate_number``  ``licence plate``
========================================================  ================

Any other name (a custom file) gets its file stem with ``_`` as spaces, unless
``class_name=`` says otherwise.

The cascades need OpenCV 4 (``opencv-python-headless<5``). OpenCV 5 dropped
``CascadeClassifier`` and the XML files from its main modules, and loading a cascade with it
raises a :class:`~danlu.errors.ModelError` that says so.

Example:
    >>> import numpy as np
    >>> from skimage.data import astronaut
    >>> face = HaarCascade("frontalface_default")
    >>> face.name, face.class_names
    ('haar:frontalface_default', ['face'])
    >>> det = face.candidates([astronaut()], score_threshold=0.0)[0]
    >>> det.xyxy.tolist(), det.labels.tolist(), [round(float(s), 3) for s in det.scores]
    ([[177.0, 66.0, 272.0, 161.0]], [0], [0.8])
    >>> "eye" in available_cascades()
    True
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.boxes.convert import box_convert
from danlu.errors import ConfigError, DatasetError, ModelError
from danlu.structures import Detections

if TYPE_CHECKING:
    import torch

#: the file name prefix and suffix of OpenCV's cascades (``haarcascade_eye.xml`` is ``eye``)
CASCADE_PREFIX = "haarcascade_"
CASCADE_SUFFIX = ".xml"

#: the number of grouped window hits that scores 0.5 (:func:`neighbour_score`)
NEIGHBOURS_AT_HALF = 10

#: (part of the cascade's name, class name), first match wins (the table in the module doc)
_CLASS_RULES: tuple[tuple[str, str], ...] = (
    ("frontalcatface", "cat face"),
    ("frontalface", "face"),
    ("profileface", "face"),
    ("eye", "eye"),
    ("fullbody", "person"),
    ("upperbody", "upper body"),
    ("lowerbody", "lower body"),
    ("smile", "smile"),
    ("license_plate", "licence plate"),
    ("licence_plate", "licence plate"),
    ("plate_number", "licence plate"),
)

_OPENCV_HINT = ("the Haar cascades need OpenCV 4: pip install 'opencv-python-headless>=4.8,<5' "
                "(OpenCV 5 moved CascadeClassifier out of its main modules)")


def _cv2() -> Any:
    """The ``cv2`` module, with ``CascadeClassifier``; ModelError when it is missing."""
    try:
        import cv2
    except ImportError as e:
        raise ModelError("haar: models need OpenCV (the cv2 module is not installed)",
                         hint=_OPENCV_HINT) from e
    if not hasattr(cv2, "CascadeClassifier"):
        raise ModelError(f"OpenCV {cv2.__version__} has no CascadeClassifier",
                         hint=_OPENCV_HINT)
    return cv2


def cascade_folder() -> Path | None:
    """The folder of the cascade XML files that OpenCV ships (``cv2.data.haarcascades``), or
    None when OpenCV or the folder is missing."""
    try:
        import cv2
    except ImportError:
        return None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    return Path(folder) if folder and Path(folder).is_dir() else None


def available_cascades() -> list[str]:
    """The names of the shipped cascades, sorted (``haarcascade_eye.xml`` -> ``"eye"``); empty
    when OpenCV ships none (OpenCV 5)."""
    folder = cascade_folder()
    if folder is None:
        return []
    return sorted(p.name[len(CASCADE_PREFIX):-len(CASCADE_SUFFIX)]
                  for p in folder.glob(f"{CASCADE_PREFIX}*{CASCADE_SUFFIX}"))


def cascade_class_name(name: str) -> str:
    """The class a cascade detects, by its name or file stem (the table in the module doc).

    Example:
        >>> cascade_class_name("frontalface_alt2"), cascade_class_name("haarcascade_fullbody")
        ('face', 'person')
        >>> cascade_class_name("/models/my_logo.xml")
        'my logo'
    """
    stem = Path(name).name
    if stem.lower().endswith(CASCADE_SUFFIX):
        stem = stem[:-len(CASCADE_SUFFIX)]
    stem = stem.removeprefix(CASCADE_PREFIX)
    key = stem.lower()
    for part, class_name in _CLASS_RULES:
        if part in key:
            return class_name
    return stem.replace("_", " ")


def _looks_like_path(name: str) -> bool:
    return name.lower().endswith(CASCADE_SUFFIX) or "/" in name or "\\" in name


def _shipped(short: str) -> Path | None:
    """The shipped file of cascade ``short`` (``"eye"``), or None."""
    folder = cascade_folder()
    path = None if folder is None else folder / f"{CASCADE_PREFIX}{short}{CASCADE_SUFFIX}"
    return path if path is not None and path.is_file() else None


def cascade_path(name: str) -> Path:
    """The XML file of cascade ``name``: a shipped name (:func:`available_cascades`, also with
    the ``haarcascade_`` prefix or as the bare file name) or the path of a cascade file.

    Raises:
        ModelError: no such shipped cascade (the message lists them) or no such file.
    """
    name = str(name).removeprefix("haar:")
    if _looks_like_path(name) and Path(name).expanduser().is_file():
        return Path(name).expanduser()
    bare = "/" not in name and "\\" not in name
    short = name.removeprefix(CASCADE_PREFIX)
    if short.lower().endswith(CASCADE_SUFFIX):
        short = short[:-len(CASCADE_SUFFIX)]
    found = _shipped(short) if bare and short else None
    if found is not None:
        return found
    names = available_cascades()
    if _looks_like_path(name):
        raise ModelError(f"haar:{name}: no such cascade file",
                         hint="give the path of an OpenCV cascade .xml, or a shipped one: "
                         + (", ".join(names) or "none here"))
    if not names:
        raise ModelError(f"haar:{name}: the installed OpenCV ships no Haar cascades",
                         hint=_OPENCV_HINT)
    listed = ", ".join(names)
    raise ModelError(f"haar:{name}: unknown Haar cascade; available: {listed}",
                     hint="or give the path of a cascade file: haar:/path/to/cascade.xml")


def _cv2_reason(error: BaseException) -> str:
    """The short reason in an OpenCV error (``"Input file is invalid"``)."""
    cause = error.__cause__ or error.__context__ or error
    text = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    reason = text.split("error: ", 1)[-1]
    return reason.split(" in function", 1)[0]


def _load(path: Path) -> Any:
    """A ``cv2.CascadeClassifier`` read from ``path``; ModelError when OpenCV cannot read it."""
    cv2 = _cv2()
    try:
        classifier = cv2.CascadeClassifier(str(path))
    except (cv2.error, SystemError) as e:  # SystemError: cv2's error raised in a constructor
        raise ModelError(f"{path}: not a readable OpenCV cascade ({_cv2_reason(e)})",
                         hint="expected a cascade .xml written by opencv_traincascade") from e
    if classifier.empty():
        raise ModelError(f"{path}: OpenCV loaded an empty cascade classifier",
                         hint="expected a cascade .xml written by opencv_traincascade")
    return classifier


def neighbour_score(neighbours: Any) -> np.ndarray:
    """The score of boxes grouped from ``neighbours`` raw window hits: ``n / (n + 10)``, float32
    in (0, 1) for ``n >= 1`` and strictly increasing in ``n``.

    Example:
        >>> [round(float(s), 4) for s in neighbour_score([1, 10, 40])]
        [0.0909, 0.5, 0.8]
    """
    n = np.asarray(neighbours, np.float64).reshape(-1)
    return (n / (n + NEIGHBOURS_AT_HALF)).astype(np.float32)


def _size(value: Any, what: str) -> tuple[int, int]:
    """``None`` / an int / ``(w, h)`` -> OpenCV's ``(w, h)`` (``(0, 0)``: no limit)."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    try:
        w, h = (int(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"haar: {what} must be an int or (width, height), got {value!r}") from e
    if w < 0 or h < 0:
        raise ConfigError(f"haar: {what} must not be negative, got {value!r}")
    return (w, h)


def _gray(image: Any, index: int) -> np.ndarray:
    """An ``HxW``, ``HxWx3`` (RGB) or ``HxWx4`` (RGBA) uint8 array -> ``HxW`` uint8 gray."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (
            arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise DatasetError(f"haar: image {index}: expected an HxWx3 uint8 RGB array, got "
                           f"{arr.dtype} {arr.shape}")
    if arr.ndim == 2 or arr.shape[2] == 1:
        return np.ascontiguousarray(arr.reshape(arr.shape[0], arr.shape[1]))
    cv2 = _cv2()
    code = cv2.COLOR_RGB2GRAY if arr.shape[2] == 3 else cv2.COLOR_RGBA2GRAY
    return cv2.cvtColor(np.ascontiguousarray(arr), code)


def _detections(boxes: Any, neighbours: Any, score_threshold: float) -> Detections:
    """OpenCV's ``xywh`` boxes and hit counts -> Detections, best first (ties: top, left)."""
    xywh = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = neighbour_score(neighbours)
    keep = scores >= score_threshold
    xywh, scores = xywh[keep], scores[keep]
    order = np.lexsort((xywh[:, 0], xywh[:, 1], -scores))
    xyxy = box_convert(xywh[order], "xywh", "xyxy").astype(np.float32)
    return Detections(xyxy, np.zeros(len(order), np.int64), scores=scores[order])


class HaarCascade:
    """An OpenCV Haar (or LBP) cascade as a danlu backend.

    Args:
        name: a shipped cascade (:func:`available_cascades`, e.g. ``"frontalface_default"``;
            a leading ``haar:`` is allowed) or the path of a cascade ``.xml``.
        scale_factor: the image pyramid's step (> 1): 1.1 tries window sizes 10% apart.
        min_neighbors: a box needs more than this many grouped window hits; 0 returns every
            raw hit ungrouped (each scoring 1/11).
        min_size: the smallest box, ``(width, height)`` pixels or one int for both; None: the
            cascade's window.
        max_size: the largest box (None: the whole image).
        flags: ``cv2.CASCADE_*`` flags (used by old-format cascades only).
        class_name: the name of the class (default: by the table in the module doc).

    Raises:
        ModelError: unknown cascade, unreadable file, or an OpenCV without cascades.
        ConfigError: a setting out of range.
    """

    transform = None
    default_iou: float | None = None
    default_max_detections: int | None = None

    def __init__(self, name: str, *, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int | Sequence[int] | None = (30, 30),
                 max_size: int | Sequence[int] | None = None, flags: int = 0,
                 class_name: str | None = None) -> None:
        if not float(scale_factor) > 1.0:
            raise ConfigError(f"haar: scale_factor must be > 1, got {scale_factor}")
        if int(min_neighbors) < 0:
            raise ConfigError(f"haar: min_neighbors must be >= 0, got {min_neighbors}")
        self.cascade = str(name).removeprefix("haar:")
        self.path = cascade_path(self.cascade)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = _size(min_size, "min_size")
        self.max_size = _size(max_size, "max_size")
        self.flags = int(flags)
        self.class_names = [class_name or cascade_class_name(self.cascade)]
        self._classifier = _load(self.path)
        self._lock = threading.Lock()  # one classifier, one detection at a time

    @property
    def name(self) -> str:
        """``haar:`` and the cascade as given (``haar:frontalface_default``)."""
        return f"haar:{self.cascade}"

    @property
    def device(self) -> torch.device:
        """Always the CPU (OpenCV runs the cascade there)."""
        import torch

        return torch.device("cpu")

    @property
    def config(self) -> dict[str, Any]:
        """The cascade and its settings (what ``Predictor.model_config`` reports)."""
        return {"name": self.name, "path": str(self.path), "scale_factor": self.scale_factor,
                "min_neighbors": self.min_neighbors, "min_size": list(self.min_size),
                "max_size": list(self.max_size), "flags": self.flags,
                "class_names": list(self.class_names)}

    def detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One ``HxW`` uint8 gray image -> OpenCV's ``xywh`` int32 boxes ``[N, 4]`` and the
        number of window hits grouped into each ``[N]`` (``detectMultiScale2``)."""
        with self._lock:
            boxes, neighbours = self._classifier.detectMultiScale2(
                gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                flags=self.flags, minSize=self.min_size, maxSize=self.max_size)
        return (np.asarray(boxes, np.int32).reshape(-1, 4),
                np.asarray(neighbours, np.int32).reshape(-1))

    def candidates(self, images: Sequence[np.ndarray], score_threshold: float
                   ) -> list[Detections]:
        """``HxWx3`` uint8 RGB arrays (``HxW`` gray and ``HxWx4`` RGBA too) -> one
        :class:`Detections` per image: ``xyxy`` float32 in its pixels, labels 0, scores by
        :func:`neighbour_score` at least ``score_threshold``, best first."""
        out = []
        for i, image in enumerate(images):
            boxes, neighbours = self.detect(_gray(image, i))
            out.append(_detections(boxes, neighbours, float(score_threshold)))
        return out

    def __repr__(self) -> str:
        return (f"HaarCascade({self.cascade!r}, scale_factor={self.scale_factor}, "
                f"min_neighbors={self.min_neighbors}, min_size={self.min_size}, "
                f"max_size={self.max_size})")


__all__ = ["HaarCascade", "available_cascades", "cascade_folder", "cascade_path",
           "cascade_class_name", "neighbour_score", "CASCADE_PREFIX", "CASCADE_SUFFIX",
           "NEIGHBOURS_AT_HALF"]
