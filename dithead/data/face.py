"""Face tracking (one identity per clip), crop boxes, crop and paste-back.

mediapipe's face mesh expects the face to fill its input, and its own
detector only sees faces close to the camera. Real footage is often a full
body in a portrait frame, so we track a region of interest (ROI) ourselves:
the full-range detector finds the face when we have none, and every later
frame runs the mesh on a square ROI around the previous frame's landmarks.
Running the detector only when tracking is lost keeps the cost per frame at
one small mesh inference.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

N_LANDMARKS = 468
MESH_INPUT = 256   # ROI side handed to the mesh (its network runs at 192)


def _silence_mediapipe_logs() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class FaceTracker:
    """468 landmarks per frame for the same face across a clip, or None.

    ``roi_scale``: ROI side relative to the previous landmark box; large enough
    for fast head motion between frames, small enough that the face fills the
    mesh input.
    """

    def __init__(self, detection_confidence: float = 0.5, tracking_confidence: float = 0.5,
                 roi_scale: float = 1.6, detector_roi_scale: float = 2.0):
        _silence_mediapipe_logs()
        import mediapipe as mp

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=detection_confidence)  # full range: small faces
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=False,
            min_detection_confidence=detection_confidence, min_tracking_confidence=tracking_confidence)
        self.roi_scale = roi_scale
        self.detector_roi_scale = detector_roi_scale
        self._last_box: np.ndarray | None = None     # [cx, cy, side] of the last face seen
        self._tracking = False

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        if self._tracking:
            landmarks = self._mesh_in_roi(frame, self._last_box, self.roi_scale)
            if landmarks is not None:
                return self._remember(landmarks)
        box = self._detect(frame)
        landmarks = None if box is None else self._mesh_in_roi(frame, box, self.detector_roi_scale)
        self._tracking = landmarks is not None
        return None if landmarks is None else self._remember(landmarks)

    def _remember(self, landmarks: np.ndarray) -> np.ndarray:
        self._last_box = landmark_box(landmarks)
        self._tracking = True
        return landmarks

    def _detect(self, frame: np.ndarray) -> np.ndarray | None:
        """[cx, cy, side] of the detection nearest the last face seen (else the largest)."""
        result = self._detector.process(frame)
        if not result.detections:
            return None
        h, w = frame.shape[:2]
        boxes = []
        for det in result.detections:
            b = det.location_data.relative_bounding_box
            boxes.append([(b.xmin + b.width / 2) * w, (b.ymin + b.height / 2) * h, max(b.width * w, b.height * h)])
        boxes = np.asarray(boxes, dtype=np.float32)
        if self._last_box is not None:
            return boxes[np.argmin(np.linalg.norm(boxes[:, :2] - self._last_box[:2], axis=1))]
        return boxes[np.argmax(boxes[:, 2])]

    def _mesh_in_roi(self, frame: np.ndarray, box: np.ndarray, scale: float) -> np.ndarray | None:
        side = float(box[2]) * scale
        roi_box = np.array([box[0] - side / 2, box[1] - side / 2, box[0] + side / 2, box[1] + side / 2])
        roi = crop_box(frame, roi_box, MESH_INPUT)
        result = self._mesh.process(roi)
        if not result.multi_face_landmarks:
            return None
        points = np.array([(p.x, p.y) for p in result.multi_face_landmarks[0].landmark], dtype=np.float32)
        return roi_box[:2].astype(np.float32) + points * np.float32(side)

    def close(self) -> None:
        self._detector.close()
        self._mesh.close()

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def nearest_valid(valid: np.ndarray) -> np.ndarray:
    """For every frame, the nearest frame with a face (its landmarks stand in for a missing face's)."""
    valid_idx = np.flatnonzero(valid)
    if len(valid_idx) == 0:
        raise ValueError("no frame of the clip has a face")
    frames = np.arange(len(valid))
    pos = np.clip(np.searchsorted(valid_idx, frames), 1, len(valid_idx)) - 1
    right = valid_idx[np.minimum(pos + 1, len(valid_idx) - 1)]
    left = valid_idx[pos]
    return np.where(np.abs(right - frames) < np.abs(left - frames), right, left)


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """[cx, cy, side] of the square around the landmarks' bounding box."""
    lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
    centre = (lo + hi) / 2
    return np.array([centre[0], centre[1], float(max(hi - lo))], dtype=np.float32)


def square_box(centre_side: np.ndarray, margin: float) -> np.ndarray:
    """Integer [x0, y0, x1, y1] square of side ``side * (1 + margin)`` around the centre.

    Integer boxes keep crop and paste-back exact; the rounding (< 0.5 source
    pixel) is far below a crop pixel at usual face sizes.
    """
    cx, cy, side = (float(v) for v in centre_side)
    s = max(2, int(round(side * (1 + margin))))
    x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
    return np.array([x0, y0, x0 + s, y0 + s], dtype=np.float32)


def crop_box(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The square ``box`` of ``frame`` (zero-padded where it leaves the frame), resized to size×size."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    h, w = frame.shape[:2]
    patch = frame[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    pad = (max(-y0, 0), max(y1 - h, 0), max(-x0, 0), max(x1 - w, 0))
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, cv2.BORDER_CONSTANT, value=0)
    if patch.shape[0] == 0 or patch.shape[1] == 0:
        return np.zeros((size, size, frame.shape[2]), dtype=frame.dtype)
    interp = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp)


def to_crop_coords(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Frame pixel coordinates -> crop pixel coordinates."""
    scale = size / float(box[2] - box[0])
    return ((points - box[:2]) * scale).astype(np.float32)


def paste_back(frame: np.ndarray, crop: np.ndarray, box: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend ``crop`` into ``frame`` inside ``box``, weighted by the crop-sized ``mask`` in [0, 1].

    Only pixels where the mask is > 0 change, so nothing outside the (blurred)
    lower-face region moves and there is no visible box edge.
    """
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    side = x1 - x0
    h, w = frame.shape[:2]
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if fx1 <= fx0 or fy1 <= fy0:
        return frame
    interp = cv2.INTER_CUBIC if side > crop.shape[0] else cv2.INTER_AREA
    big = cv2.resize(crop, (side, side), interpolation=interp).astype(np.float32)
    alpha = cv2.resize(mask.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)[..., None]
    sub = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
    region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    out = frame.copy()
    out[fy0:fy1, fx0:fx1] = np.clip(region * (1 - alpha[sub]) + big[sub] * alpha[sub], 0, 255).round().astype(frame.dtype)
    return out


@dataclass
class TrackedFrame:
    index: int
    source_index: int
    image: np.ndarray
    landmarks: np.ndarray | None    # (468, 2) frame pixels, or None without a face
    box: np.ndarray | None          # raw [cx, cy, side] from the landmarks


class BoxSmoother:
    """Centred moving average of the face box over ``window`` frames, streamed.

    Frames go in with their raw box (or None) and come out, in order, once the
    ``window // 2`` frames after them are known, with the mean of the valid
    boxes in the window around them. A frame with no valid box in its window
    keeps the previous smoothed box (or a centred default before any face).
    Only ``window // 2`` frames are held; past boxes are three floats each.
    """

    def __init__(self, window: int):
        self.half = max(int(window), 1) // 2
        self._boxes: deque[np.ndarray | None] = deque(maxlen=2 * self.half + 1)
        self._pending: deque[TrackedFrame] = deque()
        self._last: np.ndarray | None = None

    def push(self, frame: TrackedFrame) -> list[tuple[TrackedFrame, np.ndarray]]:
        self._pending.append(frame)
        self._boxes.append(frame.box)
        return [self._emit()] if len(self._pending) > self.half else []

    def flush(self) -> list[tuple[TrackedFrame, np.ndarray]]:
        out = []
        while self._pending:
            self._boxes.append(None)   # past the end: no more boxes to the right
            out.append(self._emit())
        return out

    def _emit(self) -> tuple[TrackedFrame, np.ndarray]:
        frame = self._pending.popleft()
        # The emitted frame sits ``len(pending)`` boxes from the right end of the window.
        right = len(self._boxes) - 1 - len(self._pending)
        window = list(self._boxes)[max(0, right - self.half): right + self.half + 1]
        valid = [b for b in window if b is not None]
        if valid:
            smoothed = np.mean(valid, axis=0).astype(np.float32)
        elif self._last is not None:
            smoothed = self._last
        else:
            h, w = frame.image.shape[:2]
            smoothed = np.array([w / 2, h / 2, min(h, w) / 2], dtype=np.float32)
        self._last = smoothed
        return frame, smoothed
