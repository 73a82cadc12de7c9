"""Sampling speed and memory: lockstep vs frame-by-frame, frames/s, peak memory for 10 s and 40 s of audio.

Defaults are tiny (a 2-block DiT on 16x16x3 latents, 10 DDIM steps) so the
script runs on a CPU in about a minute. The paper's model on a GPU:

    python bench/sample.py --preset DiT-L/2 --latent-size 64 --steps 25 250 --chunk 32

(256x256 crops at f=4; bf16 on CUDA). ``--model standin`` swaps the DiT for a
two-convolution stand-in, which isolates the sampler's own overhead.

Figures:
- lockstep frames/s for each ``--steps`` (``--frames`` frames, chunks of ``--chunk``),
  and the model FLOPs utilisation against a measured large-matmul rate;
- frame-by-frame frames/s on ``--fbf-frames`` frames and the lockstep/frame-by-frame ratio;
- peak memory of the streaming path (lazy conditions -> lockstep sampling -> frames
  -> H.264 writer) for 10 s and 40 s of 25 fps audio, each in a fresh process
  (CPU: peak resident memory; CUDA: peak allocated GPU memory), and their ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dithead.inference.sampling import make_scheduler, sample_frame_by_frame, sample_lockstep
from dithead.inference.video_writer import VideoWriter
from dithead.models.dit import DiTHead, dit_config, forward_flops

FPS = 25


@dataclass
class Output:
    sample: torch.Tensor


class StandIn(torch.nn.Module):
    """Called like the DiT, two convolutions deep: the sampler's overhead without the transformer."""

    def __init__(self, channels: int, audio_dim: int):
        super().__init__()
        self.image = torch.nn.Conv2d(3 * channels, 32, 3, padding=1)
        self.audio = torch.nn.Linear(11 * audio_dim, 32)
        self.out = torch.nn.Conv2d(32, channels, 3, padding=1)

    def forward(self, sample, masked, reference, audio, timestep):
        h = self.image(torch.cat([sample, masked, reference], 1)) + self.audio(audio.flatten(1))[:, :, None, None]
        return Output(self.out(torch.tanh(h)))


class RandomConditions:
    """Conditions made on request, chunk by chunk, as the pipeline encodes masked frames lazily."""

    def __init__(self, n_frames: int, channels: int, size: int, audio_dim: int, device):
        self.n_frames, self.shape, self.audio_dim, self.device = n_frames, (channels, size, size), audio_dim, device

    def __len__(self) -> int:
        return self.n_frames

    def window(self, start: int, stop: int):
        g = torch.Generator().manual_seed(start)
        n = stop - start
        return (torch.randn((n, *self.shape), generator=g).to(self.device),
                torch.randn((n, 11, self.audio_dim), generator=g).to(self.device))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("dit", "standin"), default="dit")
    parser.add_argument("--preset", default="DiT-S/2")
    parser.add_argument("--depth", type=int, default=None, help="default tiny on CPU: 2 blocks, hidden 64")
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--num-heads", type=int, default=None)
    parser.add_argument("--latent-size", type=int, default=16)
    parser.add_argument("--latent-channels", type=int, default=3)
    parser.add_argument("--audio-dim", type=int, default=32)
    parser.add_argument("--solver", default="ddim")
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--frames", type=int, default=32, help="frames sampled in lockstep per measurement")
    parser.add_argument("--fbf-frames", type=int, default=4, help="frames sampled one at a time")
    parser.add_argument("--memory-steps", type=int, default=5, help="steps in the 10 s / 40 s memory runs")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def build_model(args) -> torch.nn.Module:
    torch.manual_seed(0)
    if args.model == "standin":
        return StandIn(args.latent_channels, args.audio_dim)
    tiny = args.device == "cpu" and args.depth is None and args.hidden_size is None
    overrides = dict(depth=2, hidden_size=64, num_heads=4) if tiny else \
        dict(depth=args.depth, hidden_size=args.hidden_size, num_heads=args.num_heads)
    return DiTHead(**dit_config(args.preset, **overrides, sample_size=args.latent_size,
                                latent_channels=args.latent_channels, audio_dim=args.audio_dim))


def model_dtype(args) -> torch.dtype:
    return torch.bfloat16 if (args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")) == "bf16" \
        else torch.float32


def to_device(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    model = model.to(device)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def rate(flops_per_second: float) -> str:
    return f"{flops_per_second / 1e12:.1f} TFLOP/s" if flops_per_second >= 1e12 else f"{flops_per_second / 1e9:.1f} GFLOP/s"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampler(sampler, model, n_frames: int, steps: int, args, **kwargs) -> float:
    device = torch.device(args.device)
    conditions = RandomConditions(n_frames, args.latent_channels, args.latent_size, args.audio_dim, device)
    reference = torch.randn(1, args.latent_channels, args.latent_size, args.latent_size, device=device)
    scheduler = make_scheduler(args.solver)
    synchronize(device)
    start = time.perf_counter()
    for _ in sampler(model, scheduler, conditions, reference, steps=steps, seed=0, progress=False, **kwargs):
        pass
    synchronize(device)
    return time.perf_counter() - start


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    size = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    runs = 10 if device.type == "cuda" else 3
    for _ in range(runs):
        a @ b
    synchronize(device)
    return 2 * size ** 3 * runs / (time.perf_counter() - start)


def streaming_peak_memory(args, seconds: float, queue) -> None:
    """Child process: the whole streaming path for ``seconds`` of audio; puts peak memory (bytes)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = to_device(build_model(args), device, model_dtype(args))
    n_frames = int(seconds * FPS)
    conditions = RandomConditions(n_frames, args.latent_channels, args.latent_size, args.audio_dim, device)
    reference = torch.randn(1, args.latent_channels, args.latent_size, args.latent_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp, VideoWriter(Path(tmp) / "out.mp4", FPS) as writer:
        for chunk in sample_lockstep(model, make_scheduler(args.solver), conditions, reference,
                                     steps=args.memory_steps, seed=0, chunk_size=args.chunk, progress=False):
            # Stand-in for decoding: latents upsampled to the image size (f = 4), as uint8 frames.
            images = torch.nn.functional.interpolate(chunk[:, :3].float(), scale_factor=4)
            frames = (images.clamp(-1, 1) * 127.5 + 127.5).byte().permute(0, 2, 3, 1).cpu().numpy()
            for frame in frames:
                writer.write(np.ascontiguousarray(frame))
    if device.type == "cuda":
        queue.put(torch.cuda.max_memory_allocated(device))
    else:
        queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def measure_memory(args, seconds: float) -> int:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=streaming_peak_memory, args=(args, seconds, queue))
    process.start()
    peak = queue.get()
    process.join()
    return peak


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = model_dtype(args)
    model = to_device(build_model(args), device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model} {args.preset if args.model == 'dit' else ''} ({n_params / 1e6:.2f} M params), "
          f"latents {args.latent_channels}x{args.latent_size}x{args.latent_size}, {device} {dtype}, "
          f"solver {args.solver}, chunk {args.chunk}")
    peak = matmul_peak(device, dtype)
    flops_per_frame_step = forward_flops(model.config) if args.model == "dit" else None
    time_sampler(sample_lockstep, model, min(args.chunk, args.frames), 2, args, chunk_size=args.chunk)  # warm-up
    for steps in args.steps:
        seconds = time_sampler(sample_lockstep, model, args.frames, steps, args, chunk_size=args.chunk)
        fps = args.frames / seconds
        line = f"lockstep       {steps:4d} steps: {fps:8.2f} frames/s ({args.frames} frames)"
        if flops_per_frame_step:
            line += f", MFU {100 * flops_per_frame_step * steps * fps / peak:.1f}% of {rate(peak)} (measured matmul)"
        print(line, flush=True)
        fbf_seconds = time_sampler(sample_frame_by_frame, model, args.fbf_frames, steps, args)
        fbf_fps = args.fbf_frames / fbf_seconds
        print(f"frame-by-frame {steps:4d} steps: {fbf_fps:8.2f} frames/s ({args.fbf_frames} frames); "
              f"lockstep is {fps / fbf_fps:.1f}x faster", flush=True)
    if not args.skip_memory:
        kind = "GPU allocated" if device.type == "cuda" else "resident"
        peaks = {s: measure_memory(args, s) for s in (10.0, 40.0)}
        print(f"peak {kind} memory ({args.memory_steps} steps, chunk {args.chunk}, streaming to H.264): "
              f"10 s audio {peaks[10.0] / 2**20:.0f} MiB, 40 s audio {peaks[40.0] / 2**20:.0f} MiB, "
              f"ratio {peaks[40.0] / peaks[10.0]:.2f}")


if __name__ == "__main__":
    main()
