"""2× video frame interpolation (paper 3.5): a new frame between every two.

Two interpolators share one interface, ``middle(frame0, frame1) -> frame``:

- ``RifeInterpolator``: RIFE's IFNet (Huang et al.), the architecture of the
  official HD model v3.x (``train_log/IFNet_HDv3.py`` of
  megvii-research/ECCV2022-RIFE), written here in plain torch and loading
  that release's ``flownet.pkl`` (a state dict saved with ``torch.save``;
  loaded with ``weights_only=True``, so nothing is unpickled but tensors).
- ``FlowInterpolator``: no weights. OpenCV DIS optical flow in both
  directions; each neighbour is warped to the middle instant, and the two
  are blended with weights that drop where a warp is inconsistent with the
  flow the other way (an occlusion: the sample shows something that is not
  there at the middle instant).

``interpolate_video`` streams a video through one of them (two decoded frames
in memory), doubles the frame rate and keeps the audio.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dithead.timing import PhaseTimer

METHODS = ("auto", "rife", "flow")
RIFE_FILE = "flownet.pkl"


# --- RIFE IFNet (HD v3) ------------------------------------------------------------

def _conv(in_planes: int, out_planes: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=True), nn.PReLU(out_planes))


def _upsample_head(c: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.PReLU(c // 2),
                         nn.ConvTranspose2d(c // 2, out_channels, 4, 2, 1))


class IFBlock(nn.Module):
    """One coarse-to-fine stage: from the images (and the flow so far) at 1/scale, a flow and mask update."""

    def __init__(self, in_planes: int, c: int = 90):
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_planes, c // 2, 2), _conv(c // 2, c, 2))
        self.convblock0 = nn.Sequential(_conv(c, c), _conv(c, c))
        self.convblock1 = nn.Sequential(_conv(c, c), _conv(c, c))
        self.convblock2 = nn.Sequential(_conv(c, c), _conv(c, c))
        self.convblock3 = nn.Sequential(_conv(c, c), _conv(c, c))
        self.conv1 = _upsample_head(c, 4)      # flow: middle->0 (x, y) and middle->1 (x, y)
        self.conv2 = _upsample_head(c, 1)      # blend mask logit

    def forward(self, x: torch.Tensor, flow: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) / scale
        feat = self.conv0(torch.cat((x, flow), 1))
        for block in (self.convblock0, self.convblock1, self.convblock2, self.convblock3):
            feat = block(feat) + feat
        flow = F.interpolate(self.conv1(feat), scale_factor=scale, mode="bilinear", align_corners=False) * scale
        mask = F.interpolate(self.conv2(feat), scale_factor=scale, mode="bilinear", align_corners=False)
        return flow, mask


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at (x + flow); flow in pixels, borders repeated (RIFE's warp)."""
    b, _, h, w = flow.shape
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device, dtype=flow.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device, dtype=flow.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    norm = torch.cat([flow[:, :1] / ((image.shape[3] - 1.0) / 2.0), flow[:, 1:2] / ((image.shape[2] - 1.0) / 2.0)], 1)
    grid = (torch.cat([xs, ys], 1) + norm).permute(0, 2, 3, 1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


class IFNet(nn.Module):
    """RIFE HD v3 flow network; parameter names match the official ``flownet.pkl``.

    ``block_tea`` is the teacher block used only in training; it is part of the
    released state dict, so it is kept for exact loading and never run here.
    """

    def __init__(self):
        super().__init__()
        self.block0 = IFBlock(7 + 4, c=90)
        self.block1 = IFBlock(7 + 4, c=90)
        self.block2 = IFBlock(7 + 4, c=90)
        self.block_tea = IFBlock(10 + 4, c=90)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, scales=(4, 2, 1)) -> torch.Tensor:
        """Middle frame of two (B, 3, H, W) images in [0, 1]; H, W multiples of 32."""
        flow = img0.new_zeros(img0.shape[0], 4, *img0.shape[2:])
        mask = img0.new_zeros(img0.shape[0], 1, *img0.shape[2:])
        warped0, warped1 = img0, img1
        for block, scale in zip((self.block0, self.block1, self.block2), scales):
            # Each block runs on both orders of the pair and averages, which keeps the result symmetric.
            f0, m0 = block(torch.cat((warped0, warped1, mask), 1), flow, scale)
            f1, m1 = block(torch.cat((warped1, warped0, -mask), 1), torch.cat((flow[:, 2:4], flow[:, :2]), 1), scale)
            flow = flow + (f0 + torch.cat((f1[:, 2:4], f1[:, :2]), 1)) / 2
            mask = mask + (m0 - m1) / 2
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        return warped0 * weight + warped1 * (1 - weight)


class WeightsError(FileNotFoundError):
    """Interpolation weights missing or not what they should be; the message says what to set."""


def rife_weights_file(path: str | os.PathLike | None) -> Path:
    """``flownet.pkl`` itself, or the directory (RIFE's ``train_log``) that holds it."""
    if not path:
        raise WeightsError("no RIFE weights configured: set weights.rife in params.yaml to the official "
                           "flownet.pkl (RIFE HD v3.x, ECCV2022-RIFE train_log), or use interpolate.method: flow")
    path = Path(path)
    file = path / RIFE_FILE if path.is_dir() else path
    if not file.is_file():
        raise WeightsError(f"{file}: RIFE weights not found (weights.rife in params.yaml)")
    return file


def load_rife(path: str | os.PathLike, device: str | torch.device = "cpu") -> IFNet:
    """IFNet with the official weights, in eval mode on ``device``."""
    file = rife_weights_file(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{file}: not a loadable RIFE state dict ({type(exc).__name__}: {exc})") from None
    # Checkpoints saved from DistributedDataParallel carry a "module." prefix.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = IFNet()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{file}: not a RIFE HD v3 flownet.pkl ({len(missing)} missing keys, e.g. "
                           f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    return model.to(device).eval()


class RifeInterpolator:
    """Middle frames with RIFE. ``scale`` < 1 runs the flow at lower resolution (RIFE's UHD mode)."""

    name = "rife"

    def __init__(self, model: IFNet, device: str | torch.device = "cpu", scale: float = 1.0):
        self.model = model
        self.device = torch.device(device)
        self.scale = scale

    @classmethod
    def from_weights(cls, path, device="cpu", scale: float = 1.0) -> "RifeInterpolator":
        return cls(load_rife(path, device), device, scale)

    @torch.no_grad()
    def middle(self, frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
        h, w = frame0.shape[:2]
        multiple = max(32, int(32 / self.scale))    # every block downsamples by up to 4 x 8
        pad = (0, -w % multiple, 0, -h % multiple)
        img0, img1 = (F.pad(self._tensor(f), pad) for f in (frame0, frame1))
        out = self.model(img0, img1, tuple(s / self.scale for s in (4, 2, 1)))
        out = out[0, :, :h, :w].clamp(0, 1).mul(255).round().byte()
        return out.permute(1, 2, 0).cpu().numpy()

    def _tensor(self, frame: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frame).to(self.device).permute(2, 0, 1)[None].float() / 255.0


# --- weight-free optical-flow interpolator -----------------------------------------------

class FlowInterpolator:
    """Middle frames from DIS optical flow, warped both ways and blended by consistency.

    ``sigma``: pixels of forward/backward disagreement at which a warp's weight
    falls to 1/e (occlusions disagree by about the motion, small errors by < 1 px).
    ``flow_side``: the flow and the blending weights are computed on frames
    scaled down to this longest side, then scaled up; only the two warps and the
    blend run at full resolution. Talking-head motion is smooth at that scale,
    and at 1080p this makes a middle frame about five times cheaper.
    """

    name = "flow"

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, sigma: float = 2.0, flow_side: int = 640):
        self.dis = cv2.DISOpticalFlow_create(preset)
        self.sigma = sigma
        self.flow_side = flow_side

    def middle(self, frame0: np.ndarray, frame1: np.ndarray, t: float = 0.5) -> np.ndarray:
        height, width = frame0.shape[:2]
        scale = min(1.0, self.flow_side / max(height, width))
        g0, g1 = (_scaled(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), scale) for f in (frame0, frame1))
        f01 = self.dis.calc(g0, g1, None)
        f10 = self.dis.calc(g1, g0, None)
        # Flow from the middle instant to each neighbour, assuming locally linear motion (Super SloMo, eq. 4).
        ft0 = -(1 - t) * t * f01 + t * t * f10
        ft1 = (1 - t) ** 2 * f01 - t * (1 - t) * f10
        # A good sample from frame 0 at x + ft0 must map, by f01, to where frame 1 is sampled (x + ft1);
        # in an occlusion it lands elsewhere. Same from frame 1's side with f10. (In flow pixels.)
        err0 = np.linalg.norm(_remap(f01, ft0) - (ft1 - ft0), axis=2)
        err1 = np.linalg.norm(_remap(f10, ft1) - (ft0 - ft1), axis=2)
        w0 = (1 - t) * np.exp(-(err0 * scale ** -1 / self.sigma) ** 2)
        w1 = t * np.exp(-(err1 * scale ** -1 / self.sigma) ** 2)
        if scale < 1:
            ft0, ft1 = (cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) / scale for f in (ft0, ft1))
            w0, w1 = (cv2.resize(w, (width, height), interpolation=cv2.INTER_LINEAR) for w in (w0, w1))
        warped0 = _remap(frame0.astype(np.float32), ft0)
        warped1 = _remap(frame1.astype(np.float32), ft1)
        total = w0 + w1
        blend = (w0[..., None] * warped0 + w1[..., None] * warped1) / np.maximum(total, 1e-6)[..., None]
        # Where neither warp is trusted, fall back to the plain time-weighted blend of both warps.
        fallback = (1 - t) * warped0 + t * warped1
        out = np.where((total > 1e-3)[..., None], blend, fallback)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    return image if scale >= 1 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def _remap(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    grid_x, grid_y = _pixel_grid(*flow.shape[:2])
    return cv2.remap(image, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


@lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x and y coordinates of a frame; every frame of a video has the same size, so built once.

    Read-only: callers add the flow into new arrays and must never change these.
    """
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    grid_x.flags.writeable = grid_y.flags.writeable = False
    return grid_x, grid_y


# --- whole videos -----------------------------------------------------------------

def make_interpolator(method: str = "auto", weights_path: str | os.PathLike | None = None,
                      device: str | torch.device = "cpu") -> RifeInterpolator | FlowInterpolator:
    """``rife`` (needs weights), ``flow``, or ``auto``: RIFE when weights are configured, else flow.

    Build it once and pass it to ``interpolate_video`` for every video: RIFE
    loads its weights here.
    """
    if method not in METHODS:
        raise ValueError(f"unknown interpolation method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "rife" or (method == "auto" and weights_path):
        return RifeInterpolator.from_weights(weights_path, device)
    return FlowInterpolator()


@dataclass(frozen=True)
class InterpolateSettings:
    """The ``interpolate:`` params."""

    method: str = "auto"     # auto: RIFE when its weights are set, else optical flow; or rife / flow
    crf: int = 18            # x264 quality of the 50 fps output
    preset: str = "veryfast"  # x264 speed/size trade-off (see sample.preset)


@dataclass
class InterpolationReport:
    method: str
    input_frames: int
    output_frames: int
    input_fps: float
    output_fps: float
    audio: bool
    phase_seconds: dict = field(default_factory=dict)     # decode, interpolation, watermark, encode
    non_model_frames_per_second: float | None = None     # output frames per second of all of them


def interpolate_video(input_path: str | os.PathLike, output_path: str | os.PathLike, method: str = "auto",
                      weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                      crf: int | None = None, preset: str | None = None, mark: Callable[[np.ndarray], np.ndarray] | None = None,
                      metadata: dict[str, str] | None = None, progress: bool = True,
                      interpolator: RifeInterpolator | FlowInterpolator | None = None) -> InterpolationReport:
    """Write ``input_path`` at twice its frame rate to ``output_path``, with its audio.

    ``interpolator``: one from ``make_interpolator``, reused across videos;
    when None, one is made from ``method``, ``weights_path`` and ``device``.
    N frames become 2N (the last one shown twice), so the duration is unchanged.
    ``mark`` (e.g. the provenance watermark) is applied to every new frame;
    the input's container tags are kept, ``metadata`` added, and the method
    that ran is recorded in the tag ``interpolation``.
    """
    import av

    from dithead.inference.video_writer import DEFAULT_CRF, DEFAULT_PRESET, VideoWriter
    from dithead.data.video_reader import iter_source_frames, probe_video

    info = probe_video(input_path)
    if interpolator is None:
        interpolator = make_interpolator(method, weights_path, device)
    with av.open(str(input_path)) as container:
        tags = {k: v for k, v in container.metadata.items() if k not in ("major_brand", "minor_version",
                                                                         "compatible_brands", "encoder")}
    tags.update(metadata or {})
    tags["interpolation"] = f"2x {interpolator.name}"
    n_in = 0
    timer = PhaseTimer()
    with timer.phase("encode"), VideoWriter(output_path, fps=2 * info.fps, crf=DEFAULT_CRF if crf is None else crf,
                                            preset=preset or DEFAULT_PRESET,
                                            audio=input_path if info.has_audio else None, metadata=tags) as writer:
        previous = None
        decoded = timer.iterate("decode", iter_source_frames(input_path))
        for _, _, frame in tqdm(decoded, total=info.n_frames or None, unit="frame",
                                desc=f"interpolating ({interpolator.name})", disable=not progress):
            if previous is not None:
                writer.write(previous)
                with timer.phase("interpolation"):
                    new = interpolator.middle(previous, frame)
                if mark is not None:
                    with timer.phase("watermark"):
                        new = mark(new)
                writer.write(new)
            previous = frame
            n_in += 1
        if previous is not None:
            writer.write(previous)
            writer.write(previous)
    return InterpolationReport(interpolator.name, n_in, writer.n_frames, info.fps, 2 * info.fps, info.has_audio,
                               **timer.report(writer.n_frames))
