"""DiT throughput: forward and training-step samples/s, FLOPs per forward, and the
fraction of the hardware's measured matmul rate they reach (model FLOPs utilisation).

Defaults are tiny so the script runs anywhere in seconds. The paper's model on a GPU:

    python bench/dit.py --preset DiT-L/2 --latent-size 64 --batch 32 --steps 20

(256x256 crops, f=4: 64x64x3 latents, 1024 tokens; bf16 on CUDA). ``--vqgan``
also times the VQGAN encoder (LDM's vq-f4 at the matching image size), the
cost of encoding a frame during training rather than once beforehand.

FLOPs are counted from the config (``dithead.models.dit.forward_flops``: every matmul,
multiply and add counted separately); a training step is counted as 3 forwards
(backward = 2x forward), which leaves out the recomputation of gradient
checkpointing, so MFU stays comparable with and without it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch

from dithead.models.dit import DIT_PRESETS, DiTHead, diffusion_loss, dit_config, forward_flops, make_noise_scheduler


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="a DIT_PRESETS name (default: DiT-S/2 cut to depth 2, hidden 64)")
    parser.add_argument("--depth", type=int, default=None, help="override the preset's depth")
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--num-heads", type=int, default=None)
    parser.add_argument("--latent-size", type=int, default=16, help="latent side (image side / f)")
    parser.add_argument("--latent-channels", type=int, default=3)
    parser.add_argument("--audio-dim", type=int, default=33)
    parser.add_argument("--adaln", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed iterations (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--fuse-qkv", action="store_true", help="one matmul for q, k, v (diffusers fuse_qkv_projections)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--matmul-size", type=int, default=None, help="side of the square matmul that measures the peak")
    parser.add_argument("--vqgan", action="store_true", help="also time the vq-f4 encoder at the matching image size")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs)")
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per call of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of a large square matmul: the rate the hardware actually reaches on this machine."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, steps=10 if device.type == "cuda" else 3, warmup=2)
    return 2 * size**3 / seconds


def vqgan_encode_seconds(image_size: int, batch: int, device: torch.device, autocast, steps: int,
                         warmup: int) -> float:
    """Seconds per image for LDM's vq-f4 encoder (as built by the VQGAN stage)."""
    from dithead.models.vqgan import build_vqmodel

    vq = build_vqmodel(image_size=image_size, channels=[128, 256, 512], layers_per_block=2, latent_channels=3,
                       codebook_size=8192, norm_groups=32).to(device).eval()
    images = torch.rand(batch, 3, image_size, image_size, device=device) * 2 - 1

    @torch.no_grad()
    def encode():
        with autocast():
            vq.encode(images)

    return timed(encode, device, steps, warmup) / batch


def rate(flops_per_second: float) -> str:
    return f"{flops_per_second / 1e12:.1f} TFLOP/s" if flops_per_second >= 1e12 else f"{flops_per_second / 1e9:.1f} GFLOP/s"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    use_bf16 = (args.dtype or ("bf16" if device.type == "cuda" else "fp32")) == "bf16"
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    tiny = args.preset is None
    preset = "DiT-S/2" if tiny else args.preset
    overrides = dict(depth=args.depth, hidden_size=args.hidden_size, num_heads=args.num_heads)
    if tiny:
        overrides = {"depth": 2, "hidden_size": 64, "num_heads": 4, **{k: v for k, v in overrides.items() if v}}
    config = dit_config(preset, **overrides, sample_size=args.latent_size, latent_channels=args.latent_channels,
                        audio_dim=args.audio_dim, adaln=args.adaln)

    torch.manual_seed(0)
    model = DiTHead(**config).to(device)
    if args.fuse_qkv:
        model.fuse_qkv_projections()
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    run_model = torch.compile(model) if args.compile else model
    n_params = sum(p.numel() for p in model.parameters())
    b, c, s = args.batch, args.latent_channels, args.latent_size
    latents = torch.randn(b, c, s, s, device=device)
    masked, reference = torch.randn_like(latents), torch.randn_like(latents)
    audio = torch.randn(b, config.get("audio_window", 11), args.audio_dim, device=device)
    timesteps = torch.randint(0, 1000, (b,), device=device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext

    peak = matmul_peak(device, dtype, args.matmul_size or (8192 if device.type == "cuda" else 1024))
    flops = forward_flops(model.config, batch=b)

    # Inference runs in the weights' dtype (as the sample stage does); training keeps
    # fp32 weights under autocast (as accelerate's mixed precision does).
    inference_model = copy.deepcopy(model).eval()
    if use_bf16:
        inference_model.bfloat16()   # nn.Module's cast: diffusers' to(dtype) warns about fp32 modules it does not have
    run_inference = torch.compile(inference_model) if args.compile else inference_model

    @torch.no_grad()
    def forward():
        run_inference(sample=latents.to(dtype), masked=masked.to(dtype), reference=reference.to(dtype),
                      audio=audio.to(dtype), timestep=timesteps)

    forward_s = timed(forward, device, args.steps, args.warmup)

    scheduler = make_noise_scheduler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def train_step():
        with autocast():
            loss = diffusion_loss(run_model, scheduler, latents, masked, reference, audio)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_s = timed(train_step, device, args.steps, args.warmup)

    tokens = (s // config["patch_size"]) ** 2
    resized = {k: config[k] for k in ("depth", "hidden_size", "num_heads") if config[k] != DIT_PRESETS[preset][k]}
    name = preset + (f" resized to {resized}" if resized else "")
    print(f"device            {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
          f"{'' if device.type == 'cuda' else f' ({args.threads} thread(s))'}, {'bf16' if use_bf16 else 'fp32'}")
    print(f"model             {name}, {n_params / 1e6:.1f} M parameters, {s}x{s}x{c} latents, {tokens} tokens, "
          f"batch {b}{', adaLN' if args.adaln else ''}{', checkpointing' if args.gradient_checkpointing else ''}"
          f"{', fused qkv' if args.fuse_qkv else ''}{', compiled' if args.compile else ''}")
    print(f"matmul peak       {rate(peak)} (measured, {'bf16' if use_bf16 else 'fp32'})")
    print(f"forward           {flops / b / 1e9:.2f} GFLOP per sample; {b / forward_s:.1f} samples/s; "
          f"{rate(flops / forward_s)} = MFU {100 * flops / forward_s / peak:.1f}%")
    print(f"training step     {b / step_s:.1f} samples/s; {rate(3 * flops / step_s)} = "
          f"MFU {100 * 3 * flops / step_s / peak:.1f}% (3x forward FLOPs)")
    if args.vqgan:
        image_size = s * 4
        encode_s = vqgan_encode_seconds(image_size, b, device, autocast, args.steps, args.warmup)
        per_sample_step = step_s / b
        print(f"vq-f4 encoder     {image_size}x{image_size}: {1 / encode_s:.1f} images/s; one encode per sample = "
              f"{100 * encode_s / per_sample_step:.1f}% of a training step per sample "
              f"(masked frame on the fly; ground truth and reference from the cache save "
              f"{100 * 2 * encode_s / (per_sample_step + 3 * encode_s):.0f}% of the step)")


if __name__ == "__main__":
    main()
