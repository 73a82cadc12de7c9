"""Evolving inference: lockstep sampling equals the frame-by-frame order."""

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from dithead.inference.sampling import (TensorConditions, driving_frame_order, frame_generator, make_scheduler,
                                        pick_reference_index, sample_frame_by_frame, sample_independent,
                                        sample_lockstep, smooth_over_time, with_audio_guidance)

C, CM, H, W, D = 3, 3, 8, 8, 6


@dataclass
class Output:
    sample: torch.Tensor


class StandInDiT(torch.nn.Module):
    """Called like the DiT: model(sample, masked, reference, audio, timestep).sample -> noise like sample.

    Non-linear in every input, so a frame given the wrong reference, audio or
    step gives a different result.
    """

    def __init__(self):
        super().__init__()
        self.image = torch.nn.Conv2d(C + CM + C, 16, 3, padding=1)
        self.audio = torch.nn.Linear(11 * D + 1, 16)
        self.out = torch.nn.Conv2d(16, C, 3, padding=1)
        self.calls = []

    def forward(self, sample, masked, reference, audio, timestep):
        self.calls.append((sample.clone(), reference.clone(), timestep.clone()))
        cond = self.audio(torch.cat([audio.flatten(1), timestep[:, None].float() / 1000], 1))
        h = torch.tanh(self.image(torch.cat([sample, masked, reference], 1)) + cond[:, :, None, None])
        return Output(self.out(h))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = StandInDiT().eval()
    n = 7
    conditions = TensorConditions(torch.randn(n, CM, H, W), torch.randn(n, 11, D))
    reference = torch.randn(1, C, H, W)
    return model, conditions, reference


def run(sampler, model, conditions, reference, **kwargs):
    return torch.cat(list(sampler(model, kwargs.pop("scheduler"), conditions, reference, progress=False, **kwargs)))


@pytest.mark.parametrize("solver,eta,reference_mode,noise", [
    ("ddim", 0.0, "evolving", "per_frame"), ("ddim", 1.0, "evolving", "per_frame"),
    ("dpmsolver++", 0.0, "evolving", "per_frame"), ("ddim", 1.0, "fixed", "shared"),
    ("dpmsolver++", 0.0, "evolving", "shared"), ("dpmsolver++", 0.0, "fixed", "per_frame")])
def test_lockstep_equals_frame_by_frame_across_chunk_borders(setup, solver, eta, reference_mode, noise):
    """Same frames whatever the chunking, compared in float64.

    In float32, a batch of 7 and a batch of 1 take different matmul/conv
    kernels (MKL picks them per CPU), whose rounding (~1e-7 of the output
    scale, here ~1) DPM-Solver++'s multistep history amplifies to ~1e-5 over 6
    steps: a float32 comparison tests the CPU, not the sampling order. In
    float64 the same amplification leaves differences near 1e-14, so 1e-9
    still fails for any real ordering mistake (a wrong reference, audio or
    step moves frames by ~1e-1, see the test below).
    """
    model, conditions, reference = setup
    model = copy.deepcopy(model).double()
    conditions = TensorConditions(conditions.masked.double(), conditions.audio.double())
    reference = reference.double()
    scheduler = make_scheduler(solver)
    modes = {"reference_mode": reference_mode, "noise": noise}
    reference_frames = run(sample_frame_by_frame, model, conditions, reference,
                           scheduler=scheduler, steps=6, seed=3, eta=eta, **modes)
    assert reference_frames.dtype == torch.float64
    for chunk in (1, 3, 7, 16):   # 3 puts chunk borders after frames 2 and 5
        lockstep = run(sample_lockstep, model, conditions, reference,
                       scheduler=scheduler, steps=6, seed=3, eta=eta, chunk_size=chunk, **modes)
        assert lockstep.shape == (len(conditions), C, H, W)
        torch.testing.assert_close(lockstep, reference_frames, rtol=1e-9, atol=1e-9)


def test_reference_moves_frames_far_beyond_that_tolerance(setup):
    """The 1e-9 above is sharp: another reference latent moves the frames by orders of magnitude more."""
    model, conditions, reference = setup
    model = copy.deepcopy(model).double()
    conditions = TensorConditions(conditions.masked.double(), conditions.audio.double())
    scheduler = make_scheduler("ddim")
    right = run(sample_lockstep, model, conditions, reference.double(), scheduler=scheduler, steps=6, seed=3,
                chunk_size=7)
    other_reference = run(sample_lockstep, model, conditions, torch.zeros_like(reference).double(),
                          scheduler=scheduler, steps=6, seed=3, chunk_size=7)
    assert (right - other_reference).abs().max() > 1e-3


def test_every_later_frame_sees_previous_frames_noisy_latent_at_same_step(setup):
    _, conditions, reference = setup
    model = StandInDiT().eval()
    steps = 4
    list(sample_frame_by_frame(model, make_scheduler("ddim"), conditions, reference,
                               steps=steps, seed=0, progress=False))
    calls = model.calls                      # frame-major: frame i, step k is call i * steps + k
    for k in range(steps):
        torch.testing.assert_close(calls[k][1], reference)       # frame 0: the clean reference frame
    for i in range(1, len(conditions)):
        for k in range(steps):
            sample_prev, ref, t = calls[(i - 1) * steps + k][0], calls[i * steps + k][1], calls[i * steps + k][2]
            torch.testing.assert_close(ref, sample_prev)
            assert t.item() == calls[(i - 1) * steps + k][2].item()


def test_fixed_reference_gives_every_frame_the_clean_reference(setup):
    _, conditions, reference = setup
    model = StandInDiT().eval()
    list(sample_lockstep(model, make_scheduler("ddim"), conditions, reference, steps=3, seed=0, chunk_size=3,
                         reference_mode="fixed", progress=False))
    for _, ref, _ in model.calls:
        torch.testing.assert_close(ref, reference.expand_as(ref))


def test_shared_noise_makes_fixed_reference_frames_differ_only_where_their_conditions_do(setup):
    """Frames with the same masked latent and audio come out the same with shared noise, not with per-frame noise."""
    model, conditions, reference = setup
    same = TensorConditions(conditions.masked[:1].repeat(5, 1, 1, 1), conditions.audio[:1].repeat(5, 1, 1))
    common = {"scheduler": make_scheduler("ddim"), "steps": 4, "seed": 2, "chunk_size": 2, "eta": 1.0,
              "reference_mode": "fixed"}
    shared = run(sample_lockstep, model, same, reference, noise="shared", **common)
    per_frame = run(sample_lockstep, model, same, reference, noise="per_frame", **common)
    torch.testing.assert_close(shared, shared[:1].expand_as(shared))
    assert (per_frame - per_frame[:1]).abs().amax(dim=(1, 2, 3))[1:].min() > 0.1


def test_unknown_reference_or_noise_mode_is_a_clear_error(setup):
    model, conditions, reference = setup
    with pytest.raises(ValueError, match="sample.reference must be one of evolving, fixed, not 'previous'"):
        next(sample_lockstep(model, make_scheduler("ddim"), conditions, reference, steps=2, seed=0,
                             reference_mode="previous", progress=False))
    with pytest.raises(ValueError, match="sample.noise must be one of per_frame, shared, not 'one'"):
        next(sample_lockstep(model, make_scheduler("ddim"), conditions, reference, steps=2, seed=0,
                             noise="one", progress=False))


def test_seed_changes_frames_and_is_reproducible(setup):
    model, conditions, reference = setup
    scheduler = make_scheduler("ddim")
    a = run(sample_lockstep, model, conditions, reference, scheduler=scheduler, steps=3, seed=1, chunk_size=4)
    b = run(sample_lockstep, model, conditions, reference, scheduler=scheduler, steps=3, seed=1, chunk_size=4)
    c = run(sample_lockstep, model, conditions, reference, scheduler=scheduler, steps=3, seed=2, chunk_size=4)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.1


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.2])
@pytest.mark.parametrize("chunks", [[37], [16, 16, 5], [1] * 37, [3, 1, 30, 3]])
def test_temporal_smoothing_streamed_over_chunks_equals_the_whole_clip_filtered(sigma, chunks):
    """Chunk by chunk, the filter gives every frame, in order, as a Gaussian over the whole clip would."""
    from scipy.ndimage import gaussian_filter1d

    latents = torch.randn(37, C, 4, 4, generator=torch.Generator().manual_seed(0))
    out = list(smooth_over_time(iter(torch.split(latents, chunks)), sigma))
    whole = gaussian_filter1d(latents.numpy(), sigma, axis=0, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(torch.cat(out).numpy(), whole, atol=1e-5)


def test_temporal_smoothing_removes_frame_to_frame_scatter_and_zero_is_off():
    """Frames that each scatter around a slow motion come out closer to it; sigma 0 yields the chunks unchanged."""
    motion = torch.sin(torch.arange(60.0) / 8)[:, None, None, None].expand(60, C, 4, 4)
    frames = motion + 0.3 * torch.randn(60, C, 4, 4, generator=torch.Generator().manual_seed(1))
    smoothed = torch.cat(list(smooth_over_time(iter(torch.split(frames, 16)), 1.0)))
    assert (smoothed - motion).pow(2).mean() < 0.5 * (frames - motion).pow(2).mean()
    chunks = list(torch.split(frames, 16))
    assert all(a is b for a, b in zip(smooth_over_time(iter(chunks), 0.0), chunks))
    with pytest.raises(ValueError, match="sample.temporal_smoothing must be >= 0"):
        next(smooth_over_time(iter(chunks), -1.0))


def test_unknown_solver_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown solver 'euler'"):
        make_scheduler("euler")


def test_reference_frame_is_far_enough_or_farthest():
    rng = np.random.default_rng(0)
    picks = [pick_reference_index(200, 10, rng) for _ in range(50)]
    assert all(abs(p - 10) >= 60 for p in picks)
    assert len(set(picks)) > 10
    assert pick_reference_index(30, 5, rng) == 29                 # clip too short: farthest frame
    valid = np.ones(200, bool)
    valid[70:] = False
    assert pick_reference_index(200, 5, rng, valid=valid) in range(65, 70)


def test_driving_order_ping_pongs_long_audio_and_cuts_short_audio():
    assert driving_frame_order(4, 11).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2]
    assert driving_frame_order(5, 3).tolist() == [0, 1, 2]
    assert driving_frame_order(1, 3).tolist() == [0, 0, 0]
    order = driving_frame_order(10, 1000)
    assert np.abs(np.diff(order)).max() == 1                        # never a jump cut


def test_independent_frames_are_the_first_frame_of_evolving_inference_and_plain_ddim(setup):
    """The DiT's training previews (``sample_independent``) run the sample stage's DDIM: a frame with a clean
    reference comes out as evolving inference's first frame, and as the plain DDIM loop."""
    model, conditions, reference = setup
    model = copy.deepcopy(model).double()
    scheduler = make_scheduler("ddim")
    masked, audio = (x.double() for x in conditions.window(0, 1))
    noise = torch.randn((1, C, H, W), generator=frame_generator(3, 0)).double()
    independent = sample_independent(model, scheduler, masked, reference.double(), audio, steps=6, noise=noise)
    evolving = run(sample_frame_by_frame, model, TensorConditions(masked, audio), reference.double(),
                   scheduler=scheduler, steps=6, seed=3)
    torch.testing.assert_close(independent, evolving, rtol=0, atol=0)

    ddim = type(scheduler).from_config(scheduler.config)
    ddim.set_timesteps(6)
    z = noise * ddim.init_noise_sigma
    with torch.no_grad():
        for t in ddim.timesteps:
            eps = model(sample=z, masked=masked, reference=reference.double(), audio=audio,
                        timestep=torch.full((1,), int(t))).sample
            z = ddim.step(eps, t, z).prev_sample
    torch.testing.assert_close(independent, z, rtol=0, atol=0)


class MeanAudioStandIn(StandInDiT):
    """The stand-in with the DiT's ``audio_mean`` buffer (the training clips' mean feature row)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("audio_mean", torch.linspace(-1, 1, D))


def test_audio_guidance_scales_the_audio_effect_from_the_mean_audio():
    torch.manual_seed(0)
    # float64: the guided pass runs a batch twice the size, whose float32 kernels round differently by CPU.
    model = MeanAudioStandIn().double().eval()
    n = 3
    x = dict(sample=torch.randn(n, C, H, W, dtype=torch.float64), masked=torch.randn(n, CM, H, W, dtype=torch.float64),
             reference=torch.randn(n, C, H, W, dtype=torch.float64), timestep=torch.tensor([10, 500, 900]))
    audio = torch.randn(n, 11, D, dtype=torch.float64)
    mean_audio = model.audio_mean.expand(n, 11, D)
    with torch.no_grad():
        with_audio = model(audio=audio, **x).sample
        without = model(audio=mean_audio, **x).sample
        for scale in (0.0, 2.0, 3.5):
            guided = with_audio_guidance(model, scale)(audio=audio, **x).sample
            torch.testing.assert_close(guided, without + scale * (with_audio - without))
        # Where the audio is the mean one, guidance changes nothing.
        torch.testing.assert_close(with_audio_guidance(model, 3.0)(audio=mean_audio, **x).sample, without)
    assert with_audio_guidance(model, 1.0) is model               # no guidance costs no second pass
    with pytest.raises(ValueError, match=r"sample\.audio_guidance must be >= 0"):
        with_audio_guidance(model, -1.0)


def test_guided_sampling_changes_the_frames_only_through_the_audio(setup):
    """A guided model samples like any other (same order, same noise); with the mean audio it equals the plain one."""
    _, conditions, reference = setup
    conditions = TensorConditions(conditions.masked.double(), conditions.audio.double())
    reference = reference.double()
    torch.manual_seed(0)
    model = MeanAudioStandIn().double().eval()      # float64, as above
    scheduler = make_scheduler("ddim")
    common = dict(scheduler=scheduler, steps=4, seed=0, chunk_size=3)
    plain = run(sample_lockstep, model, conditions, reference, **common)
    guided = run(sample_lockstep, with_audio_guidance(model, 3.0), conditions, reference, **common)
    assert (guided - plain).abs().max() > 1e-2
    average = TensorConditions(conditions.masked, model.audio_mean.expand_as(conditions.audio).clone())
    torch.testing.assert_close(run(sample_lockstep, with_audio_guidance(model, 3.0), average, reference, **common),
                               run(sample_lockstep, model, average, reference, **common))
