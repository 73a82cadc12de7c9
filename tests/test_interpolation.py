"""2× frame interpolation: flow beats averaging on known motion; RIFE loads official-format weights."""

import runpy
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from dithead.inference.interpolation import (FlowInterpolator, IFNet, RifeInterpolator, WeightsError,
                                             interpolate_video, load_rife, make_interpolator)
from dithead.inference.video_writer import write_video

SIZE = 64
REPO = Path(__file__).resolve().parents[1]


def textured(seed, size):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 2.0)


def scene(shift: float) -> np.ndarray:
    """A textured square moved ``shift`` pixels right over a static textured background."""
    frame = textured(0, SIZE) * 0.6 + 40
    square = textured(1, 24)
    matrix = np.float32([[1, 0, 12 + shift], [0, 1, 20]])
    moved = cv2.warpAffine(square, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones((24, 24), np.float32), matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR)[..., None]
    return np.clip(frame * (1 - inside) + moved * inside, 0, 255).round().astype(np.uint8)


def psnr(a, b):
    return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def test_flow_middle_frame_beats_averaging_on_known_motion():
    frame0, truth, frame1 = scene(0), scene(3), scene(6)
    middle = FlowInterpolator().middle(frame0, frame1)
    average = ((frame0.astype(np.float32) + frame1) / 2).round().astype(np.uint8)
    flow_psnr, average_psnr = psnr(middle, truth), psnr(average, truth)
    print(f"middle frame PSNR: flow {flow_psnr:.1f} dB, averaging {average_psnr:.1f} dB")
    assert flow_psnr > average_psnr + 3


def test_flow_computed_at_a_lower_resolution_still_places_the_motion():
    """Frames larger than flow_side get their flow from scaled-down copies: at 1/3 scale the middle frame
    stays close to the full-resolution answer and far better than averaging."""
    big = lambda shift: cv2.resize(scene(shift), None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)  # noqa: E731
    frame0, truth, frame1 = big(0), big(3), big(6)
    full = FlowInterpolator(flow_side=10_000).middle(frame0, frame1)
    scaled = FlowInterpolator(flow_side=SIZE).middle(frame0, frame1)
    average = ((frame0.astype(np.float32) + frame1) / 2).round().astype(np.uint8)
    assert psnr(scaled, truth) > psnr(average, truth) + 3
    assert psnr(scaled, truth) > psnr(full, truth) - 1.5


def test_static_frames_stay_the_same():
    frame = scene(0)
    assert np.abs(FlowInterpolator().middle(frame, frame).astype(int) - frame).max() <= 1


@pytest.fixture(scope="module")
def rife_weights(tmp_path_factory):
    """Random IFNet weights saved as the official release stores them: torch.save(state_dict) in flownet.pkl."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("train_log")
    model = IFNet().eval()
    torch.save(model.state_dict(), directory / "flownet.pkl")
    return directory, model


def test_rife_loads_official_format_and_runs(rife_weights):
    directory, model = rife_weights
    frame0, frame1 = scene(0), scene(6)
    loaded = RifeInterpolator.from_weights(directory)              # train_log directory or the file itself
    middle = loaded.middle(frame0, frame1)
    assert middle.shape == frame0.shape and middle.dtype == np.uint8
    direct = RifeInterpolator(model).middle(frame0, frame1)
    assert np.array_equal(middle, direct)
    # A checkpoint saved from DistributedDataParallel ("module." keys) loads the same.
    ddp_file = directory / "ddp.pkl"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, ddp_file)
    assert np.array_equal(RifeInterpolator.from_weights(ddp_file).middle(frame0, frame1), direct)


def test_rife_pads_sizes_that_are_not_multiples_of_32(rife_weights):
    directory, _ = rife_weights
    frame = np.zeros((50, 70, 3), np.uint8)
    assert RifeInterpolator.from_weights(directory).middle(frame, frame).shape == (50, 70, 3)


def test_missing_or_wrong_weights_say_what_to_set(tmp_path):
    with pytest.raises(WeightsError, match="set weights.rife in params.yaml"):
        make_interpolator("rife", "")
    with pytest.raises(WeightsError, match="flownet.pkl: RIFE weights not found"):
        load_rife(tmp_path)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pkl")
    with pytest.raises(WeightsError, match="not a RIFE HD v3 flownet.pkl"):
        load_rife(tmp_path / "other.pkl")
    assert make_interpolator("auto", "").name == "flow"


@pytest.mark.parametrize("method", ["flow", "rife"])
def test_interpolated_video_doubles_fps_and_keeps_audio(tmp_path, rife_weights, method):
    wav = tmp_path / "a.wav"
    sf.write(str(wav), (0.2 * np.sin(np.arange(16000 * 2) / 10)).astype(np.float32), 16000)
    source = tmp_path / "in.mp4"
    write_video(source, (scene(k) for k in range(10)), fps=25, audio=wav, metadata={"synthetic": "true"})
    out = tmp_path / "out.mp4"
    report = interpolate_video(source, out, method=method, weights_path=rife_weights[0], progress=False)
    assert report.method == method and report.input_frames == 10 and report.output_frames == 20
    with av.open(str(out)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert float(video.average_rate) == 50
        assert sum(1 for _ in c.decode(video=0)) == 20
        assert abs(float(audio.duration * audio.time_base) - 0.4) <= 1 / 50
        assert c.metadata["synthetic"] == "true" and c.metadata["interpolation"] == f"2x {method}"
    assert set(report.phase_seconds) == {"decode", "interpolation", "encode"}      # no mark given
    seconds = sum(report.phase_seconds.values())            # each phase rounded to the millisecond
    assert 20 / (seconds + 0.002) - 0.01 <= report.non_model_frames_per_second <= 20 / max(seconds - 0.002, 1e-3) + 0.01


def test_a_given_interpolator_is_used_and_nothing_is_loaded(tmp_path):
    source = tmp_path / "in.mp4"
    write_video(source, (scene(k) for k in range(4)), fps=25)
    # method="rife" without weights would fail if interpolate_video built its own.
    report = interpolate_video(source, tmp_path / "out.mp4", method="rife", weights_path=None,
                               interpolator=FlowInterpolator(), progress=False)
    assert report.method == "flow" and report.output_frames == 8


def test_flow_pixel_grid_is_built_once_per_frame_size():
    from dithead.inference.interpolation import _pixel_grid

    _pixel_grid.cache_clear()
    FlowInterpolator().middle(scene(0), scene(2))
    FlowInterpolator().middle(scene(1), scene(3))
    assert _pixel_grid.cache_info().misses == 1 and _pixel_grid.cache_info().hits == 7


def write_stage_params(root, method, rife):
    (root / "params.yaml").write_text(f"interpolate: {{method: {method}, crf: 18}}\n"
                                      f"sample: {{watermark: {{message: DiT-Head, strength: 32.0}}}}\n"
                                      f"weights: {{rife: '{rife}'}}\n")


def test_stage_loads_rife_once_for_all_videos(tmp_path, monkeypatch, rife_weights):
    import dithead.inference.interpolation

    samples = tmp_path / "outputs" / "samples"
    for name in ("a/one.mp4", "b/two.mp4"):
        (samples / name).parent.mkdir(parents=True)
        # small frames keep the test fast (the watermark needs at least 32 px a side)
        write_video(samples / name, (cv2.resize(scene(k), (128, 128)) for k in range(3)), fps=25)
    write_stage_params(tmp_path, "rife", rife_weights[0])
    loads = []
    real_load = dithead.inference.interpolation.load_rife
    monkeypatch.setattr(dithead.inference.interpolation, "load_rife", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.chdir(tmp_path)
    assert runpy.run_path(str(REPO / "stages" / "interpolate.py"))["main"]() == 0
    assert len(loads) == 1
    for name in ("a/one.mp4", "b/two.mp4"):
        with av.open(str(tmp_path / "outputs" / "interpolated" / name)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 6 and c.metadata["interpolation"] == "2x rife"


def test_stage_reports_missing_weights_and_bad_videos_without_a_traceback(tmp_path, monkeypatch):
    samples = tmp_path / "outputs" / "samples"
    samples.mkdir(parents=True)
    (samples / "broken.mp4").write_bytes(b"not a video")
    monkeypatch.chdir(tmp_path)
    main = runpy.run_path(str(REPO / "stages" / "interpolate.py"))["main"]
    write_stage_params(tmp_path, "rife", tmp_path / "nowhere")
    with pytest.raises(SystemExit, match=r"^interpolate: .*nowhere: RIFE weights not found"):
        main()
    write_stage_params(tmp_path, "flow", "")
    with pytest.raises(SystemExit, match=r"^interpolate: .*broken.mp4"):
        main()
    assert not (tmp_path / "outputs" / "interpolated").exists()
