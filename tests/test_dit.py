"""The DiT (dithead.models.dit), its data (dithead.training.dit_data) and the train_dit stage (tiny models, 64x64 demo crops)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml
from diffusers import VQModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

from conftest import run_until_sigkill, sigterm_self_when
from dithead.data.audio_features import audio_windows
from dithead.data.mask import MaskSettings, apply_mask, lower_face_mask
from dithead.data.store import list_clips
from dithead.inference.sampling import pick_reference_index
from dithead.models.dit import (DIT_PRESETS, DiTHead, diffusion_loss, dit_config, forward_flops, make_noise_scheduler,
                                masked_region_weight)
from dithead.models.latents import encode_latents
from dithead.models.vqgan import build_vqmodel, downsample_factor
from dithead.training.dit_data import (DiTDataset, LazyArrays, audio_feature_paths, mirrored_name, precompute_latents,
                                      masked_view_name, target_frames, translate, view_name)
from dithead.training.split import FrameRangeView, split_by_identity
from dithead.training.train_dit import (DiTTrainingConfig, drop_audio, noisy_audio, parameter_groups, _conditions,
                                       _fingerprint_config, _region_weight)

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / "stages" / "train_dit.py"
AUDIO_DIM = 8
TINY = dict(depth=2, hidden_size=32, num_heads=4, audio_dim=AUDIO_DIM)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(sample_size: int = 8, patch: int = 2, adaln: bool = False, seed: int = 0,
               audio_adaln: bool = False) -> DiTHead:
    """A tiny DiT whose output layer is random: a fresh DiT predicts exactly zero
    (DiT zero-initialises that layer), which would hide any dependence on the inputs.
    The adaLN modulation is random too, for the same reason."""
    torch.manual_seed(seed)
    model = DiTHead(**dit_config(f"DiT-S/{patch}", **TINY, sample_size=sample_size, adaln=adaln,
                                 audio_adaln=audio_adaln)).eval()
    torch.nn.init.normal_(model.proj_out.weight, std=0.5)
    if adaln:
        torch.nn.init.normal_(model.timestep_modulation[1].weight, std=0.5)
    return model


def inputs(batch: int = 2, size: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latent = lambda: torch.randn(batch, 3, size, size, generator=g)  # noqa: E731
    return dict(sample=latent(), masked=latent(), reference=latent(),
                audio=torch.randn(batch, 11, AUDIO_DIM, generator=g),
                timestep=torch.randint(0, 1000, (batch,), generator=g))


def predict(model: DiTHead, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**kwargs).sample


def test_presets_match_facebookresearch_dit():
    assert len(DIT_PRESETS) == 12
    assert DIT_PRESETS["DiT-S/8"] == dict(depth=12, hidden_size=384, num_heads=6, patch_size=8)
    assert DIT_PRESETS["DiT-B/4"] == dict(depth=12, hidden_size=768, num_heads=12, patch_size=4)
    assert DIT_PRESETS["DiT-L/2"] == dict(depth=24, hidden_size=1024, num_heads=16, patch_size=2)  # the paper's
    assert DIT_PRESETS["DiT-XL/2"] == dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2)
    with pytest.raises(ValueError, match="unknown DiT preset"):
        dit_config("DiT-M/2")


@pytest.mark.parametrize("patch", [2, 4, 8])
@pytest.mark.parametrize("latent_size", [16, 64])  # 64x64 and 256x256 crops at f=4
def test_output_has_the_shape_of_the_noisy_latent(latent_size, patch):
    model = tiny_model(sample_size=latent_size, patch=patch)
    out = predict(model, **inputs(size=latent_size))
    assert out.shape == (2, 3, latent_size, latent_size)
    assert model.patch_embed.pos_embed.shape[1] == (latent_size // patch) ** 2


@pytest.mark.parametrize("preset", ["DiT-S/2", "DiT-B/4", "DiT-L/2", "DiT-XL/8"])
@pytest.mark.parametrize("latent_size", [64, 256])
def test_full_size_presets_build_their_token_grid(preset, latent_size):
    # Full widths are built on the meta device: shapes without memory or time.
    with torch.device("meta"):
        model = DiTHead(**dit_config(preset, sample_size=latent_size, latent_channels=3))
    dims = DIT_PRESETS[preset]
    p = dims["patch_size"]
    assert len(model.blocks) == dims["depth"]
    assert model.patch_embed.proj.weight.shape == (dims["hidden_size"], 9, p, p)
    assert model.patch_embed.pos_embed.shape == (1, (latent_size // p) ** 2, dims["hidden_size"])
    assert model.proj_out.weight.shape == (p * p * 3, dims["hidden_size"])
    assert model.blocks[0].attn1.heads == dims["num_heads"]


def test_dit_l2_size():
    with torch.device("meta"):
        model = DiTHead(**dit_config("DiT-L/2", sample_size=64))
    # 24 blocks x (self-attention 4d^2 + cross-attention 4d^2 + MLP 8d^2) at d = 1024.
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(24 * 16 * 1024**2, rel=0.01)


@pytest.mark.parametrize("adaln", [False, True])
def test_output_depends_on_audio_reference_masked_and_timestep(adaln):
    model = tiny_model(adaln=adaln)
    x = inputs()
    base = predict(model, **x)
    other = inputs(seed=2)
    for name in ("audio", "reference", "masked", "timestep"):
        changed = predict(model, **{**x, name: other[name]})
        assert not torch.allclose(changed, base, atol=1e-4), f"output ignores {name}"


def test_audio_adaln_modulates_the_blocks_by_the_audio():
    """With ``audio_adaln`` the audio reaches the output even when cross-attention cannot carry it."""
    x = inputs()
    other_audio = inputs(seed=2)["audio"]
    for audio_adaln in (False, True):
        model = tiny_model(adaln=True, audio_adaln=audio_adaln)
        with torch.no_grad():
            model.audio_proj.weight.zero_()            # cross-attention sees the same tokens for any audio
        changed = predict(model, **{**x, "audio": other_audio})
        assert torch.allclose(changed, predict(model, **x), atol=1e-6) is not audio_adaln


def test_audio_adaln_needs_adaln():
    with pytest.raises(ValueError, match="audio_adaln needs adaln"):
        DiTHead(**dit_config("DiT-S/2", **TINY, sample_size=8, audio_adaln=True))
    with pytest.raises(ValueError, match="dit.audio_adaln needs dit.adaln"):
        DiTTrainingConfig(audio_adaln=True)


def test_masked_region_weight_follows_the_mask_at_latent_resolution():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1                               # the lower half of the image is hidden
    mask[..., 2:4, :4] = 0.5                           # a soft edge over one latent row, left half
    weight = masked_region_weight(mask, (4, 4), 5.0)[0, 0]
    assert torch.equal(weight[2:], torch.full((2, 4), 5.0))
    assert torch.equal(weight[0], torch.ones(4))
    assert torch.equal(weight[1], torch.tensor([3.0, 3.0, 1.0, 1.0]))


def test_mouth_weight_multiplies_the_hidden_regions_weight_inside_the_mouth_box():
    mask, mouth = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1                               # lower half hidden
    mouth[..., 4:6, 2:6] = 1                           # the lips: latent rows 2, columns 1-2
    batch, latents = {"mask": mask, "mouth": mouth}, {"latents": torch.zeros(1, 3, 4, 4)}
    weight = _region_weight(batch, latents, DiTTrainingConfig(masked_region_weight=5.0, mouth_weight=3.0))[0, 0]
    assert torch.equal(weight[2, 1:3], torch.full((2,), 15.0))
    assert torch.equal(weight[2, [0, 3]], torch.full((2,), 5.0)) and torch.equal(weight[3], torch.full((4,), 5.0))
    assert torch.equal(weight[:2], torch.ones(2, 4))
    mouth_only = _region_weight(batch, latents, DiTTrainingConfig(mouth_weight=3.0))[0, 0]
    assert torch.equal(mouth_only[2, 1:3], torch.full((2,), 3.0)) and mouth_only.sum() == 16 + 2 * 2
    assert _region_weight(batch, latents, DiTTrainingConfig()) is None       # the paper's plain MSE


def test_region_weight_makes_errors_in_the_hidden_region_count_more():
    """A model wrong only outside the mask loses less with the weighting; one wrong only inside, more."""
    scheduler = make_noise_scheduler()
    x = inputs(batch=2)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    inside = torch.zeros(2, 1, 8, 8)
    inside[..., 4:, :] = 1
    weight = 1 + 4 * inside

    def loss_with_error_in(region, region_weight):
        wrong = lambda **kw: SimpleNamespace(sample=noise + region)  # noqa: E731
        return float(diffusion_loss(wrong, scheduler, x["sample"], x["masked"], x["reference"], x["audio"],
                                    noise=noise, timesteps=torch.tensor([10, 500]), region_weight=region_weight))

    assert loss_with_error_in(1 - inside, None) == pytest.approx(0.5)
    assert loss_with_error_in(1 - inside, weight) == pytest.approx(1 / 6)   # 96 unit errors at weight 1 / total weight 96 + 5 * 96
    assert loss_with_error_in(inside, weight) == pytest.approx(5 / 6)
    assert loss_with_error_in(inside, torch.ones_like(inside)) == pytest.approx(0.5)


def test_each_audio_frame_and_its_position_in_the_window_matter():
    model = tiny_model()
    x = inputs()
    base = predict(model, **x)
    edge = x["audio"].clone()
    edge[:, 0] += 1.0                                  # only the frame 5 steps back
    assert not torch.allclose(predict(model, **{**x, "audio": edge}), base, atol=1e-4)
    reversed_window = x["audio"].flip(1)               # same frames, other order
    assert not torch.allclose(predict(model, **{**x, "audio": reversed_window}), base, atol=1e-4)


def test_batch_items_are_independent():
    # float64: batch sizes 1 and 2 take different matmul kernels, whose float32
    # rounding differs by CPU; in float64 any leak between items still shows.
    model = tiny_model().double()
    x = {k: v.double() if v.is_floating_point() else v for k, v in inputs().items()}
    both = predict(model, **x)
    first = predict(model, **{k: v[:1] for k, v in x.items()})
    torch.testing.assert_close(both[:1], first, atol=1e-10, rtol=1e-10)


def test_attention_is_pytorch_sdpa():
    model = tiny_model()
    assert {type(p) for p in model.attn_processors.values()} == {AttnProcessor2_0}
    assert len(model.attn_processors) == 2 * 2          # self- and cross-attention in each block


def test_dropout_acts_in_training_only_and_is_saved(tmp_path):
    model = tiny_model()
    x = inputs()
    plain = predict(model, **x)
    torch.manual_seed(0)
    with_dropout = DiTHead(**{**model.config, "dropout": 0.3})
    with_dropout.load_state_dict(model.state_dict())
    torch.testing.assert_close(predict(with_dropout.eval(), **x), plain)      # sampling: no dropout
    assert not torch.allclose(predict(with_dropout.train(), **x), plain)      # training: units dropped
    with_dropout.save_pretrained(tmp_path / "dit")
    assert DiTHead.from_pretrained(tmp_path / "dit").config.dropout == 0.3


def test_fresh_model_predicts_zero_noise():
    model = DiTHead(**dit_config("DiT-S/2", **TINY, sample_size=8))
    assert predict(model, **inputs()).abs().max() == 0


def test_bad_inputs_name_the_problem():
    model = tiny_model()
    x = inputs()
    with pytest.raises(ValueError, match="audio must be"):
        model(**{**x, "audio": x["audio"][:, :5]})
    with pytest.raises(ValueError, match="differ in shape"):
        model(**{**x, "reference": x["reference"][..., :4]})


@pytest.mark.parametrize("adaln, audio_adaln", [(False, False), (True, False), (True, True)])
def test_save_and_load_round_trip(tmp_path, adaln, audio_adaln):
    model = tiny_model(adaln=adaln, audio_adaln=audio_adaln)
    model.save_pretrained(tmp_path / "dit")
    loaded = DiTHead.from_pretrained(tmp_path / "dit").eval()
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    x = inputs()
    torch.testing.assert_close(predict(loaded, **x), predict(model, **x))


def test_gradient_checkpointing_gives_the_same_gradients():
    x = inputs()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(adaln=True).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(**x).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_forward_matches_fp32():
    model = tiny_model()
    x = inputs()
    reference = predict(model, **x)
    low = predict(model.to(torch.bfloat16), **x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().mean() < 0.05 * reference.abs().mean()


@pytest.mark.parametrize("adaln", [False, True])
@pytest.mark.parametrize("condition", ["masked", "reference", "audio"])
def test_learns_a_fixed_batch_through_each_condition(adaln, condition):
    """A few hundred steps on one batch bring the diffusion loss (same noise, same steps) well down, using
    ``condition``: the other two are the same for every item, so only it tells the items apart."""
    torch.manual_seed(0)
    model = DiTHead(**dit_config("DiT-S/2", **TINY, sample_size=8, adaln=adaln, audio_adaln=adaln))
    scheduler = make_noise_scheduler()
    x = inputs(batch=4)
    batch = dict(latents=x["sample"], masked=x["masked"], reference=x["reference"], audio=x["audio"])
    for other in {"masked", "reference", "audio"} - {condition}:
        batch[other] = batch[other][:1].expand_as(batch[other]).clone()
    g = torch.Generator().manual_seed(3)
    probe = dict(noise=torch.randn(4, 3, 8, 8, generator=g), timesteps=torch.tensor([200, 300, 400, 500]))
    with torch.no_grad():
        before = diffusion_loss(model, scheduler, **batch, **probe).item()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(400):
        loss = diffusion_loss(model, scheduler, **batch, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = diffusion_loss(model, scheduler, **batch, **probe).item()
        # Given another item's condition, the model denoises towards the wrong latent; a model that only
        # learned to predict noise from the noisy latent would not care.
        swapped = diffusion_loss(model, scheduler, **{**batch, condition: batch[condition].roll(1, 0)}, **probe).item()
    assert before == pytest.approx(1.0, abs=0.3)       # zero prediction of unit noise
    assert after < 0.5 * before
    assert swapped > 1.5 * after, (after, swapped)


def test_noise_scheduler_is_adm_linear():
    scheduler = make_noise_scheduler()
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.betas[0].item() == pytest.approx(1e-4)
    assert scheduler.betas[-1].item() == pytest.approx(0.02)
    assert scheduler.config.prediction_type == "epsilon"
    short = make_noise_scheduler(250)
    assert short.betas[-1].item() == pytest.approx(0.08)


@pytest.mark.parametrize("adaln", [False, True])
def test_forward_flops_counts_every_matmul(adaln):
    model = tiny_model(sample_size=16, patch=4, adaln=adaln)
    model.set_attn_processor(AttnProcessor())    # explicit matmuls, which the counter sees (SDPA on CPU it does not)
    x = inputs(size=16)
    with FlopCounterMode(display=False) as counter:
        predict(model, **x)
    assert forward_flops(model.config, batch=2) == counter.get_total_flops()


def test_forward_flops_agrees_with_the_dit_paper():
    # DiT-XL/2 at 256x256 (32x32x4 latents): 118.6 GFLOPs (multiply-adds) without our cross-attention.
    config = dit_config("DiT-XL/2", sample_size=32, latent_channels=4, adaln=True, audio_dim=33)
    d, tokens, context = 1152, 256, 12
    cross_attention_macs = 28 * (2 * tokens * d * d + 2 * context * d * d + 2 * tokens * context * d)
    dit_macs = forward_flops(config) / 2 - cross_attention_macs
    assert dit_macs / 1e9 == pytest.approx(118.6, rel=0.02)


# --------------------------------------------------------------------------- data


TINY_VQGAN = dict(image_size=64, channels=[8, 16, 16], layers_per_block=1, latent_channels=3, codebook_size=64,
                  norm_groups=8)


def tiny_vqgan(seed: int):
    torch.manual_seed(seed)
    return build_vqmodel(**TINY_VQGAN).eval()


class FakeClip(SimpleNamespace):
    def __len__(self) -> int:
        return self.frames


def fake_clip(name: str, identity: str | None = None, frames: int = 100):
    return FakeClip(name=name, meta={"identity": identity} if identity else {}, frames=frames)


def test_identity_split_never_puts_one_person_on_both_sides():
    clips = [fake_clip("a1", "alice"), fake_clip("a2", "alice"), fake_clip("b1", "bob"), fake_clip("carol")]
    split = split_by_identity(clips, val_identities=["alice"])
    assert split.validation == ["a1", "a2"] and split.train == ["b1", "carol"]
    assert split.to_json()["validation_identities"] == ["alice"]
    for seed in range(6):
        drawn = split_by_identity(clips, val_count=1, seed=seed)
        held_out = {drawn.identities[c] for c in drawn.validation}
        assert len(held_out) == 1
        assert not held_out & {drawn.identities[c] for c in drawn.train}
        assert sorted(drawn.train + drawn.validation) == ["a1", "a2", "b1", "carol"]
        assert drawn == split_by_identity(clips, val_count=1, seed=seed)       # reproducible
    with pytest.raises(ValueError, match=r"\['dave'\] are not in the data"):
        split_by_identity(clips, val_identities=["dave"])
    with pytest.raises(ValueError, match="leaves none for training"):
        split_by_identity(clips, val_count=3)


def test_reference_frame_is_far_enough_and_has_a_face():
    # Training draws references by the rule inference uses for the first frame.
    valid = np.ones(200, dtype=bool)
    valid[150:] = False
    rng = np.random.default_rng(0)
    picks = [pick_reference_index(len(valid), 100, rng, 60, valid) for _ in range(200)]
    assert set(picks) <= set(range(0, 41))               # 160..199 are far enough but have no face
    assert len(set(picks)) > 20                          # drawn at random, not one fixed frame
    short = np.ones(80, dtype=bool)
    assert pick_reference_index(len(short), 30, rng, 60, short) == 79           # farthest frame of a short clip


@pytest.fixture(scope="module")
def demo_data(processed_demo, tmp_path_factory):
    """The demo clips, their audio features and a ground-truth latent cache made by a tiny VQGAN."""
    clips = list_clips(processed_demo / "data" / "processed")
    vq = tiny_vqgan(0)
    cache = tmp_path_factory.mktemp("latents")
    latents = precompute_latents(vq, clips, cache, batch_size=16)
    features, dim = audio_feature_paths(clips, processed_demo / "data" / "features")
    return SimpleNamespace(clips=clips, vq=vq, cache=cache, latents=LazyArrays(latents), features=LazyArrays(features),
                           dim=dim)


def test_latent_cache_holds_each_frames_latent_and_is_reused(demo_data, tmp_path):
    clip = demo_data.clips[0]
    cached = demo_data.latents[clip.name]
    valid = np.flatnonzero(clip.valid)
    frames = valid[[0, len(valid) // 2, -1]]
    expected = encode_latents(demo_data.vq, torch.from_numpy(clip.crops(frames)).permute(0, 3, 1, 2))
    np.testing.assert_allclose(cached[frames].astype(np.float32), expected.numpy(), rtol=2e-3, atol=2e-3)
    assert cached.shape == (len(clip), 3, 16, 16) and cached.dtype == np.float16

    path = demo_data.latents.paths[clip.name]
    stamp = path.stat().st_mtime_ns
    precompute_latents(demo_data.vq, demo_data.clips, demo_data.cache)
    assert path.stat().st_mtime_ns == stamp                  # same weights, same crops: not encoded again
    precompute_latents(tiny_vqgan(1), demo_data.clips, demo_data.cache)
    assert path.stat().st_mtime_ns != stamp                  # other weights: encoded again
    precompute_latents(demo_data.vq, demo_data.clips, demo_data.cache)   # leave it as the fixture made it


def test_dataset_item_is_frame_reference_masked_frame_and_audio(demo_data):
    clips = demo_data.clips
    mask = MaskSettings(kernel_size=9, sigma=2.0, max_shift=2)
    rows = target_frames(clips, [clips[0].name])
    dataset = DiTDataset(clips, rows, demo_data.latents, demo_data.features, mask=mask, min_ref_distance=60, seed=3)
    assert len(dataset) == len(rows) and set(rows[:, 0]) == {0}
    clip = clips[0]
    valid = np.flatnonzero(clip.valid)
    features = np.load(demo_data.features.paths[clip.name])
    shifts = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)]
    for index in (0, 37, len(dataset) - 1, len(dataset) + 37):
        item = dataset[index]
        frame, reference = int(item["frame"]), int(item["reference_frame"])
        assert frame == rows[index % len(rows), 1]
        farthest = np.abs(valid - frame).max()
        assert reference in valid and abs(reference - frame) >= min(60, farthest)
        inference_rule = pick_reference_index(len(clip), frame, np.random.default_rng([3, index]), 60,
                                              np.asarray(clip.valid))
        assert reference == inference_rule
        latents = demo_data.latents[clip.name]
        np.testing.assert_array_equal(item["latent"].numpy(), latents[frame].astype(np.float32))
        np.testing.assert_array_equal(item["reference"].numpy(), latents[reference].astype(np.float32))
        np.testing.assert_array_equal(item["audio"].numpy(), audio_windows(features, [frame], 11)[0])
        masked = item["masked"].permute(1, 2, 0).numpy()
        masks = [lower_face_mask(clip.landmarks[frame], (64, 64), 9, 2.0, shift=s) for s in shifts]
        used = [m for m in masks if np.array_equal(masked, apply_mask(clip.crop(frame), m))]
        assert used, "masked frame is not the crop under a shifted mask"
        assert any(np.array_equal(item["mask"][0].numpy(), m) for m in used), "mask is not the one applied"
        assert masked.sum() < clip.crop(frame).sum()
    assert torch.equal(dataset[5]["masked"], dataset[5]["masked"])          # reproducible
    later_epoch = [dataset[i + len(dataset)] for i in range(8)]
    assert any(int(a["reference_frame"]) != int(dataset[i]["reference_frame"]) for i, a in enumerate(later_epoch))


def test_mirrored_items_flip_target_reference_and_masked_frame_together(demo_data, tmp_path):
    clips = demo_data.clips
    paths = precompute_latents(demo_data.vq, clips, tmp_path, batch_size=16, mirrored=True)
    clip = clips[0]
    mirrored = np.load(paths[mirrored_name(clip.name)])
    frames = np.flatnonzero(clip.valid)[[0, -1]]
    flipped_crops = torch.from_numpy(clip.crops(frames)).permute(0, 3, 1, 2).flip(-1)
    np.testing.assert_allclose(mirrored[frames].astype(np.float32), encode_latents(demo_data.vq, flipped_crops).numpy(),
                               rtol=2e-3, atol=2e-3)                 # the mirrored face's latent, not a flipped latent
    assert not np.allclose(mirrored[frames], np.load(paths[clip.name])[frames][..., ::-1], atol=1e-2)

    rows = target_frames(clips, [clip.name])
    settings = dict(mask=MaskSettings(kernel_size=9, sigma=2.0, max_shift=2), seed=3)
    plain = DiTDataset(clips, rows, LazyArrays(paths), demo_data.features, **settings)
    always = DiTDataset(clips, rows, LazyArrays(paths), demo_data.features, mirror_probability=1.0, **settings)
    for index in (0, 41):
        a, b = plain[index], always[index]
        frame, reference = int(a["frame"]), int(a["reference_frame"])
        assert (int(b["frame"]), int(b["reference_frame"])) == (frame, reference)    # same draws, then mirrored
        np.testing.assert_array_equal(b["latent"].numpy(), mirrored[frame].astype(np.float32))
        np.testing.assert_array_equal(b["reference"].numpy(), mirrored[reference].astype(np.float32))
        assert torch.equal(b["masked"], a["masked"].flip(-1)) and torch.equal(b["mask"], a["mask"].flip(-1))
        assert torch.equal(b["mouth"], a["mouth"].flip(-1))
        assert torch.equal(b["audio"], a["audio"])
    half = DiTDataset(clips, rows, LazyArrays(paths), demo_data.features, mirror_probability=0.5, **settings)
    flips = [not torch.equal(half[i]["masked"], plain[i]["masked"]) for i in range(40)]
    assert 8 <= sum(flips) <= 32


def test_cached_masked_latents_are_the_latents_of_each_items_masked_frame(demo_data, tmp_path):
    """dit.cache_masked_latents: every mask shift, mirrored or not, is encoded once; each training item then
    brings the latent of exactly the masked frame it shows, as the masked VQGAN would encode it."""
    clips = [FrameRangeView(demo_data.clips[0], 0, 24)]                     # 24 frames: enough, and fast
    mask = MaskSettings(kernel_size=9, sigma=2.0, max_shift=1)
    paths = precompute_latents(demo_data.vq, clips, tmp_path, batch_size=16, mirrored=True, mask=mask)
    assert len(paths) == 18                                                  # 9 shifts x 2 mirrors
    rows = target_frames(clips, [clips[0].name])
    latents = LazyArrays(precompute_latents(demo_data.vq, clips, tmp_path / "faces", batch_size=16, mirrored=True))
    dataset = DiTDataset(clips, rows, latents, demo_data.features, mask=mask, mirror_probability=0.5,
                         seed=3, masked_latents=LazyArrays(paths))
    items = [dataset[i] for i in range(12)]
    masked = torch.stack([item["masked"] for item in items])
    np.testing.assert_allclose(torch.stack([item["masked_latent"] for item in items]).numpy(),
                               encode_latents(demo_data.vq, masked).numpy(), rtol=2e-3, atol=2e-3)
    assert len({item["masked"].numpy().tobytes() for item in items}) == 12
    assert "masked_latent" not in DiTDataset(clips, rows, latents, demo_data.features, mask=mask)[0]
    cache_time = {p: p.stat().st_mtime_ns for p in paths.values()}
    assert precompute_latents(demo_data.vq, clips, tmp_path, batch_size=16, mirrored=True, mask=mask) == paths
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == cache_time            # reused, not encoded again
    wider = precompute_latents(demo_data.vq, clips, tmp_path, batch_size=16, mask=MaskSettings(kernel_size=15, max_shift=0))
    assert wider[masked_view_name(clips[0].name, (0, 0))].stat().st_mtime_ns > \
        cache_time[paths[masked_view_name(clips[0].name, (0, 0))]]                      # another mask: encoded anew


def test_training_takes_cached_masked_latents_instead_of_encoding(demo_data):
    batch = {"latent": torch.zeros(2, 3, 16, 16), "reference": torch.zeros(2, 3, 16, 16),
             "audio": torch.zeros(2, 11, 8), "masked": torch.zeros(2, 3, 64, 64, dtype=torch.uint8),
             "masked_latent": torch.randn(2, 3, 16, 16)}
    vq = SimpleNamespace()                                   # no encoder: using it would raise
    assert _conditions(batch, vq, contextlib.nullcontext)["masked"] is batch["masked_latent"]
    del batch["masked_latent"]
    encoded = _conditions(batch, demo_data.vq, contextlib.nullcontext)["masked"]
    torch.testing.assert_close(encoded, encode_latents(demo_data.vq, batch["masked"]).float())


def test_moved_items_read_the_latents_of_the_moved_faces_and_move_their_pixels_alike(demo_data, tmp_path):
    """max_translation: each item is moved by whole latent pixels (4 px here), edges repeated; its target and
    reference are the latents of the moved faces, from caches of their own, not moved latents."""
    clips = demo_data.clips[:1]
    clip = clips[0]
    paths = precompute_latents(demo_data.vq, clips, tmp_path, batch_size=16, mirrored=True, max_translation=1)
    assert len([key for key in paths if key.split(":")[0] == clip.name]) == 18       # 2 mirrors x 9 moves
    plain_latents, moved = np.load(paths[clip.name]), np.load(paths[view_name(clip.name, dy=1, dx=-1)])
    frames = np.flatnonzero(clip.valid)[[0, -1]]
    stride = downsample_factor(demo_data.vq)
    moved_crops = translate(clip.crops(frames), stride, -stride, axes=(1, 2))
    np.testing.assert_allclose(moved[frames].astype(np.float32),
                               encode_latents(demo_data.vq, torch.from_numpy(moved_crops).permute(0, 3, 1, 2)).numpy(),
                               rtol=2e-3, atol=2e-3)
    assert not np.allclose(moved[frames], translate(plain_latents[frames], 1, -1, axes=(2, 3)), atol=1e-2)

    rows = target_frames(clips, [clip.name])
    settings = dict(mask=MaskSettings(kernel_size=9, sigma=2.0, max_shift=2), seed=3)
    plain = DiTDataset(clips, rows, LazyArrays(paths), demo_data.features, **settings)
    both = DiTDataset(clips, rows, LazyArrays(paths), demo_data.features, max_translation=1, mirror_probability=0.5,
                      **settings)
    views = set()
    for index in range(16):
        a, b = plain[index], both[index]
        frame, reference = int(a["frame"]), int(a["reference_frame"])
        assert (int(b["frame"]), int(b["reference_frame"])) == (frame, reference)
        assert torch.equal(b["audio"], a["audio"])
        found = [(m, dy, dx) for m in (False, True) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                 if torch.equal(b["masked"], torch.from_numpy(translate(
                     a["masked"].flip(-1).numpy() if m else a["masked"].numpy(), stride * dy, stride * dx, axes=(1, 2))))]
        assert found, "the masked frame is not the plain one, mirrored or not, moved by whole latent pixels"
        mirror, dy, dx = found[0]
        views.add(found[0])
        view = np.load(paths[view_name(clip.name, mirror, dy, dx)])
        np.testing.assert_array_equal(b["latent"].numpy(), view[frame].astype(np.float32))
        np.testing.assert_array_equal(b["reference"].numpy(), view[reference].astype(np.float32))
        for key in ("mask", "mouth"):
            flipped = a[key].flip(-1) if mirror else a[key]
            assert torch.equal(b[key], torch.from_numpy(translate(flipped.numpy(), stride * dy, stride * dx, axes=(1, 2))))
    assert len(views) >= 5                                       # items take different views
    row = np.arange(4.0)[None]
    np.testing.assert_array_equal(translate(row, 0, 1, axes=(0, 1)), [[0, 0, 1, 2]])    # right, left edge repeated
    np.testing.assert_array_equal(translate(row, 0, -2, axes=(0, 1)), [[2, 3, 3, 3]])


def test_loader_workers_give_the_batches_of_the_main_process(demo_data):
    """params default to 4 loader workers: clips (seen through a time split's frame range), crop stores and
    memory-mapped arrays must cross to worker processes and give the same batches as without workers."""
    from accelerate import Accelerator

    from dithead.training.split import FrameRangeView
    from dithead.training.run import make_dataloader

    clips = [FrameRangeView(c, 0, len(c) - 30) for c in demo_data.clips]
    rows = target_frames(clips, [c.name for c in clips])
    dataset = DiTDataset(clips, rows, demo_data.latents, demo_data.features, mask=MaskSettings(9, 2.0, 2), seed=5)
    batches = {}
    for workers in (0, 2):
        loader = make_dataloader(dataset, batch_size=4, accelerator=Accelerator(cpu=True), seed=1, start_step=3,
                                 workers=workers)
        batches[workers] = [batch for batch, _ in zip(loader, range(3))]
    for single, parallel in zip(batches[0], batches[2]):
        assert single.keys() == parallel.keys()
        for name in single:
            assert torch.equal(single[name], parallel[name]), name
    frames = torch.cat([b["frame"] for b in batches[2]])
    assert (frames < len(clips[0]) - 30).all()                       # the held-out end stays out


def test_audio_features_must_exist_and_match_the_clip(demo_data, tmp_path):
    clips = demo_data.clips
    with pytest.raises(FileNotFoundError, match=rf"{clips[0].name}\.npy: no audio features"):
        audio_feature_paths(clips, tmp_path)
    for clip in clips:
        np.save(tmp_path / f"{clip.name}.npy", np.zeros((len(clip) - 3, 8), np.float32))
    with pytest.raises(ValueError, match=r"expected \(\d+, D\): one row per frame"):
        audio_feature_paths(clips, tmp_path)


# --------------------------------------------------------------------------- the stage


@pytest.mark.parametrize("key, value, message", [
    ("steps", 0, r"dit\.steps must be >= 1, not 0"),
    ("batch_size", 0, r"dit\.batch_size must be >= 1"),
    ("val_every", 0, r"dit\.val_every must be >= 1"),
    ("checkpoint_every", -1, r"dit\.checkpoint_every must be >= 0"),
    ("preset", "DiT-M/2", r"dit\.preset must be one of DiT-S/2, .*not 'DiT-M/2'"),
    ("num_heads", 5, r"dit\.hidden_size \(1024\) must be divisible by dit\.num_heads \(5\)"),
    ("depth", 0, r"dit\.depth must be null"),
    ("audio_window", 10, r"dit\.audio_window must be odd"),
    ("ema_decay", 1.5, r"dit\.ema_decay must be in \[0, 1\]"),
    ("sample_steps", 2000, r"dit\.sample_steps \(2000\) must be <= dit\.diffusion_steps \(1000\)"),
    ("mixed_precision", "fp8", r"dit\.mixed_precision must be one of auto, bf16, fp16, no"),
    ("dropout", 1.0, r"dit\.dropout must be in \[0, 1\), not 1\.0"),
    ("audio_dropout", -0.1, r"dit\.audio_dropout must be in \[0, 1\], not -0\.1"),
    ("mirror_probability", 1.5, r"dit\.mirror_probability must be in \[0, 1\], not 1\.5"),
    ("audio_learning_rate_scale", -1, r"dit\.audio_learning_rate_scale must be >= 0, not -1"),
    ("audio_noise", -0.5, r"dit\.audio_noise must be >= 0, not -0\.5"),
])
def test_training_config_names_the_bad_param(key, value, message):
    with pytest.raises(ValueError, match=message):
        DiTTrainingConfig(**{key: value})


def test_audio_dropout_replaces_whole_windows_by_the_guidance_null():
    audio = torch.randn(400, 11, AUDIO_DIM)
    mean = torch.randn(AUDIO_DIM)
    assert drop_audio(audio, mean, 0.0, torch.Generator().manual_seed(0)) is audio
    dropped = drop_audio(audio, mean, 0.25, torch.Generator().manual_seed(0))
    is_null = (dropped == mean).all(-1).all(-1)
    kept = (dropped == audio).all(-1).all(-1)
    assert (is_null | kept).all()                              # whole windows, nothing in between
    assert 60 <= int(is_null.sum()) <= 140                     # about a quarter of 400
    torch.testing.assert_close(drop_audio(audio, mean, 0.25, torch.Generator().manual_seed(0)), dropped)
    assert (drop_audio(audio, mean, 1.0, torch.Generator().manual_seed(0)) == mean).all()


def test_audio_noise_is_scaled_per_feature_and_off_at_zero():
    audio = torch.randn(2000, 11, AUDIO_DIM)
    std = torch.linspace(0.5, 4.0, AUDIO_DIM)
    assert noisy_audio(audio, std, 0.0, torch.Generator().manual_seed(0)) is audio
    noisy = noisy_audio(audio, std, 0.5, torch.Generator().manual_seed(0))
    measured = (noisy - audio).reshape(-1, AUDIO_DIM).std(0)
    torch.testing.assert_close(measured, 0.5 * std, rtol=0.05, atol=0)   # the same share of every feature's spread
    torch.testing.assert_close(noisy_audio(audio, std, 0.5, torch.Generator().manual_seed(0)), noisy)


@pytest.mark.parametrize("audio_adaln", [False, True])
def test_the_audio_path_learns_at_its_own_rate(audio_adaln):
    model = tiny_model(adaln=audio_adaln, audio_adaln=audio_adaln)
    config = DiTTrainingConfig(learning_rate=1e-3, audio_learning_rate_scale=5.0)
    rest, audio = parameter_groups(model, config)
    names = {id(p): name for name, p in model.named_parameters()}
    audio_names = {names[id(p)] for p in audio["params"]}
    expected = {"audio_pos", "audio_proj.weight", "audio_proj.bias"}
    if audio_adaln:
        expected |= {f"audio_embedder.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")}
    assert audio_names == expected
    assert sorted(names[id(p)] for p in rest["params"] + audio["params"]) == sorted(names.values())  # each once
    # One AdamW step on the same gradient everywhere: the audio path moves 5x as far as the rest.
    optimizer = torch.optim.AdamW([rest, audio], weight_decay=0.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters()}
    assert moved["audio_proj.weight"] == pytest.approx(5e-3, rel=1e-3)
    assert moved["patch_embed.proj.weight"] == pytest.approx(1e-3, rel=1e-3)


def test_bookkeeping_params_keep_checkpoints_valid():
    base = _fingerprint_config(DiTTrainingConfig())
    bookkeeping = dict(steps=500_000, log_every=1, val_every=7, sample_every=7, sample_count=2, sample_steps=5,
                       checkpoint_every=0, workers=0, latent_batch_size=8)
    assert _fingerprint_config(DiTTrainingConfig(**bookkeeping)) == base      # a longer run continues a shorter one
    for key, value in dict(learning_rate=2e-4, batch_size=16, preset="DiT-B/2", min_ref_distance=30,
                           audio_learning_rate_scale=5.0).items():
        assert _fingerprint_config(DiTTrainingConfig(**{key: value})) != base, key


RUN = dict(steps=60, checkpoint_every=20, val_every=20, sample_every=60, log_every=10, batch_size=8, val_samples=8,
           workers=0, mixed_precision="no")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_workdir(root: Path, processed_demo: Path, with_vqgans: bool = True) -> Path:
    """A project root: the demo data, two tiny VQGANs, params.yaml = defaults + smoke profile + RUN."""
    (root / "data").mkdir(parents=True)
    for name in ("processed", "features"):
        (root / "data" / name).symlink_to(processed_demo / "data" / name)
    if with_vqgans:
        for seed, which in enumerate(("masked", "gt")):
            tiny_vqgan(seed).save_pretrained(root / "models" / f"vqgan_{which}")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _merge(params, yaml.safe_load((REPO / "profiles" / "smoke.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(_merge(params, {"dit": RUN})))
    return root


def run_stage(workdir: Path, monkeypatch) -> None:
    """The stage's main() in ``workdir`` on one thread (the arithmetic of a subprocess with OMP_NUM_THREADS=1)."""
    spec = importlib.util.spec_from_file_location("train_dit_stage", STAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(workdir)
    try:
        module.main()
    finally:
        monkeypatch.chdir(REPO)


def metric_history(workdir: Path, name: str) -> list[tuple[int, float]]:
    path = workdir / "dvclive" / "train_dit" / "plots" / "metrics" / f"{name}.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return [(int(step), float(value)) for step, value in rows]


def checkpoint_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints" / "train_dit"
    return sorted(int(p.name.split("_")[1]) for p in directory.glob("step_*")) if directory.is_dir() else []


@pytest.fixture(scope="module")
def reference_run(processed_demo, tmp_path_factory) -> Path:
    """An uninterrupted smoke training."""
    monkeypatch = pytest.MonkeyPatch()
    workdir = make_workdir(tmp_path_factory.mktemp("dit") / "reference", processed_demo)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_stage(workdir, monkeypatch)
    finally:
        torch.set_num_threads(threads)
        monkeypatch.undo()
    return workdir


def test_stage_saves_raw_and_ema_weights_schedule_split_and_logs(reference_run):
    out = reference_run / "models" / "dit"
    raw, ema = DiTHead.from_pretrained(out), DiTHead.from_pretrained(out / "ema")
    assert raw.config.sample_size == 16 and raw.config.audio_dim == 32 and raw.config.depth == 2
    # The output projection starts at exactly zero, so its trained value shows whether the EMA followed
    # the training: an average of recent weights lies close to the last ones, but is not a copy of them.
    trained, averaged = raw.proj_out.weight.detach(), ema.proj_out.weight.detach()
    assert trained.norm() > 0 and not torch.equal(averaged, trained)
    assert (averaged - trained).norm() < 0.5 * trained.norm()
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"] == 1000
    split = json.loads((out / "split.json").read_text())
    assert len(split["validation"]) == 1 and len(split["train"]) == 1
    assert not set(split["validation"]) & set(split["train"])

    summary = json.loads((reference_run / "dvclive" / "train_dit" / "metrics.json").read_text())
    assert summary["step"] == 60 and {"loss", "loss_ema", "audio_gain", "reference_gain", "masked_gain"} <= set(summary["val"])
    assert [s for s, _ in metric_history(reference_run, "val/loss")] == [20, 40, 60]
    assert [s for s, _ in metric_history(reference_run, "train/loss")] == [10, 20, 30, 40, 50, 60]
    grid = cv2.imread(str(reference_run / "dvclive" / "train_dit" / "plots" / "images" / "samples.png"))
    assert grid.shape == (3 * 64, 4 * 64, 3)          # ground truth | masked | generated, 4 held-out frames
    assert not (reference_run / "checkpoints" / "train_dit").exists()    # cleared after the final save


def test_time_split_trains_on_each_clips_start_and_validates_on_its_end(processed_demo, tmp_path, monkeypatch,
                                                                        one_torch_thread):
    workdir = make_workdir(tmp_path / "time", processed_demo)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["split"].update(mode="time", val_fraction=0.25, gap_seconds=0.4)
    # The personal profile's model options ride along: the audio in adaLN, the hidden region weighted.
    params["dit"].update(steps=10, val_every=10, sample_every=10, checkpoint_every=0,
                         adaln=True, audio_adaln=True, masked_region_weight=5.0, cache_masked_latents=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    import dithead.training.train_dit

    region_weights = []

    def recording_loss(*args, region_weight=None, **kwargs):
        region_weights.append(region_weight)
        return diffusion_loss(*args, region_weight=region_weight, **kwargs)

    monkeypatch.setattr(dithead.training.train_dit, "diffusion_loss", recording_loss)
    run_stage(workdir, monkeypatch)
    training = [w for w in region_weights if w is not None]       # validation keeps the plain, comparable loss
    assert len(training) == 10 and len(region_weights) > 10
    assert all(w.shape == (8, 1, 16, 16) and w.min() == 1 and w.max() == 5 for w in training)

    split = json.loads((workdir / "models" / "dit" / "split.json").read_text())
    assert split["mode"] == "time" and split["validation"] == split["train"] == ["astronaut", "astronaut_mirrored"]
    n = len(np.load(workdir / "data" / "features" / "astronaut.npy"))
    assert split["validation_frames"]["astronaut"] == [n - round(n * 0.25), n]
    assert split["train_frames"]["astronaut"] == [0, n - round(n * 0.25) - 10]           # 0.4 s gap at 25 fps
    # The masked frames' latents were cached for every mask shift, of the training frames only.
    masked_cache = sorted((workdir / "checkpoints" / "train_dit_latents" / "masked").rglob("astronaut.npy"))
    assert len(masked_cache) == 9                                                         # 1 px shift: 3 x 3
    cached = np.load(masked_cache[0]).astype(np.float32)
    stop = split["train_frames"]["astronaut"][1]
    assert np.abs(cached[:stop]).sum(axis=(1, 2, 3)).min() > 0 and not cached[stop:].any()
    # The audio standardisation comes from the training frames alone.
    model = DiTHead.from_pretrained(workdir / "models" / "dit" / "ema")
    assert model.config.audio_adaln
    trained = np.concatenate([np.load(workdir / "data" / "features" / f"{name}.npy")[slice(*split["train_frames"][name])]
                              for name in split["train"]])
    np.testing.assert_allclose(model.audio_mean.numpy(), trained.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.audio_std.numpy(), trained.std(0, ddof=1), rtol=1e-3, atol=1e-4)


def test_stage_training_lowers_the_loss_on_a_fixed_batch(reference_run, demo_data):
    clips = demo_data.clips
    split = json.loads((reference_run / "models" / "dit" / "split.json").read_text())
    latents = LazyArrays({c.name: reference_run / "checkpoints" / "train_dit_latents" / f"{c.name}.npy" for c in clips})
    dataset = DiTDataset(clips, target_frames(clips, split["train"])[::10], latents, demo_data.features,
                         mask=MaskSettings(9, 2.0, 0), seed=0)
    items = [dataset[i] for i in range(len(dataset))]
    batch = {k: torch.stack([item[k] for item in items]) for k in ("latent", "reference", "masked", "audio")}
    masked = encode_latents(VQModel.from_pretrained(reference_run / "models" / "vqgan_masked"), batch["masked"])
    g = torch.Generator().manual_seed(0)
    probe = dict(latents=batch["latent"], masked=masked, reference=batch["reference"], audio=batch["audio"],
                 noise=torch.randn(batch["latent"].shape, generator=g),
                 timesteps=torch.randint(0, 1000, (len(items),), generator=g))
    scheduler = make_noise_scheduler()
    trained = DiTHead.from_pretrained(reference_run / "models" / "dit").eval()
    with torch.no_grad():
        before = diffusion_loss(DiTHead.from_config(trained.config), scheduler, **probe).item()
        after = diffusion_loss(trained, scheduler, **probe).item()
    assert after < 0.85 * before, (before, after)


def test_interrupted_training_resumes_to_the_uninterrupted_result(reference_run, processed_demo, tmp_path,
                                                                  monkeypatch):
    workdir = make_workdir(tmp_path / "interrupted", processed_demo)

    # 1. SIGTERM: the stage saves a checkpoint at the current step and exits with a message.
    with sigterm_self_when(lambda: bool(checkpoint_steps(workdir))):
        with pytest.raises(SystemExit, match=r"interrupted at step (\d+)") as stopped:
            run_stage(workdir, monkeypatch)
    stopped_at = max(checkpoint_steps(workdir))
    assert f"step {stopped_at};" in str(stopped.value) and 20 <= stopped_at < 60

    # 2. SIGKILL (no chance to save) once a newer checkpoint exists.
    log = tmp_path / "stage.log"
    code = run_until_sigkill([sys.executable, str(STAGE)], workdir, log,
                            lambda: max(checkpoint_steps(workdir), default=0) > stopped_at)
    assert code == -signal.SIGKILL, log.read_text()[-2000:]
    assert "resumed from" in log.read_text()
    assert not (workdir / "models" / "dit").exists()

    # 3. The same command again finishes the run, with exactly the uninterrupted run's result.
    run_stage(workdir, monkeypatch)
    for sub in ("", "ema/"):
        resumed = load_file(workdir / "models" / "dit" / sub / "diffusion_pytorch_model.safetensors")
        reference = load_file(reference_run / "models" / "dit" / sub / "diffusion_pytorch_model.safetensors")
        assert resumed.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(resumed[name], reference[name], rtol=1e-5, atol=1e-6, msg=f"{sub}{name}")
    resumed_history, reference_history = metric_history(workdir, "val/loss"), metric_history(reference_run, "val/loss")
    assert [s for s, _ in resumed_history] == [s for s, _ in reference_history] == [20, 40, 60]
    np.testing.assert_allclose([v for _, v in resumed_history], [v for _, v in reference_history], rtol=1e-5)


def test_stage_rejects_bad_params_before_encoding_latents(processed_demo, tmp_path, monkeypatch):
    workdir = make_workdir(tmp_path / "bad_params", processed_demo)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["dit"]["steps"] = 0
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"dit\.steps must be >= 1, not 0"):
        run_stage(workdir, monkeypatch)
    assert not (workdir / "checkpoints").exists()


def test_stage_without_vqgans_says_which_stage_to_run(processed_demo, tmp_path, monkeypatch):
    workdir = make_workdir(tmp_path / "no_vqgan", processed_demo, with_vqgans=False)
    with pytest.raises(SystemExit, match="no trained VQGAN in models/vqgan_masked .run the train_vqgan stages"):
        run_stage(workdir, monkeypatch)
