"""Audio features: per-frame alignment, windows, the mel encoder and wav2vec2 loading."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from dithead.data.audio_features import FeatureModelError, audio_windows, frame_features, load_wav2vec2, pool_to_frames


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory):
    """A randomly initialised wav2vec2 with the real model's 33-letter CTC head, saved like a hub download."""
    config = Wav2Vec2Config(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16)
    path = tmp_path_factory.mktemp("w2v") / "wav2vec2"
    Wav2Vec2ForCTC(config).save_pretrained(path)
    return path


def test_windows_are_centred_and_edge_padded():
    feats = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    w = audio_windows(feats, [0, 10, 19], size=11)
    assert w.shape == (3, 11, 3)
    assert w[1, :, 0].tolist() == list(range(5, 16))
    assert w[0, :, 0].tolist() == [0] * 6 + [1, 2, 3, 4, 5]
    assert w[2, :, 0].tolist() == [14, 15, 16, 17, 18] + [19] * 6


def test_pool_averages_two_50hz_rows_per_25fps_frame():
    rows = np.arange(10, dtype=np.float32)[:, None]
    assert pool_to_frames(rows, 50, 5, 25)[:, 0].tolist() == [0.5, 2.5, 4.5, 6.5, 8.5]
    # More frames than rows: the missing frames take the nearest row.
    assert pool_to_frames(rows[:4], 50, 3, 25)[:, 0].tolist() == [0.5, 2.5, 3.0]


def test_mel_features_line_up_with_video_frames():
    rate, fps, n = 16000, 25, 50
    samples = np.zeros(n * rate // fps, np.float32)
    burst = slice(20 * 640, 30 * 640)                           # loud during frames 20..29
    samples[burst] = np.sin(np.arange(10 * 640) * 2 * np.pi * 440 / rate)
    feats = frame_features(samples, rate, n, fps, "mel", n_mels=32)
    assert feats.shape == (n, 32)
    energy = feats.mean(axis=1)
    loud = energy > (energy.max() + energy.min()) / 2
    assert set(np.nonzero(loud)[0]) >= set(range(21, 29)) and not loud[:19].any() and not loud[31:].any()


def test_wav2vec2_logits_per_frame_from_local_directory(tiny_wav2vec2):
    net = load_wav2vec2(str(tiny_wav2vec2))
    samples = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32)
    feats = frame_features(samples, 16000, 75, 25, "wav2vec2", net=net)
    assert feats.shape == (75, 33) and np.isfinite(feats).all()
    hidden = frame_features(samples, 16000, 75, 25, "wav2vec2", net=net, output="hidden", layer=1)
    assert hidden.shape == (75, 32)


def test_wav2vec2_chunks_keep_shape_and_stay_close(tiny_wav2vec2):
    net = load_wav2vec2(str(tiny_wav2vec2))
    samples = np.random.default_rng(1).standard_normal(16000 * 4).astype(np.float32)
    whole = frame_features(samples, 16000, 100, 25, "wav2vec2", net=net, chunk_seconds=60)
    chunked = frame_features(samples, 16000, 100, 25, "wav2vec2", net=net, chunk_seconds=1)
    assert chunked.shape == whole.shape
    # A random network attends everywhere; with 1 s of context the chunks still agree closely.
    assert np.abs(chunked - whole).max() < 0.25 * np.abs(whole).max()


def test_missing_wav2vec2_names_the_param(tmp_path):
    with pytest.raises(FeatureModelError, match="audio_features.model"):
        load_wav2vec2("nobody/not-a-cached-model")
    with pytest.raises(FeatureModelError, match="audio_features.model"):
        load_wav2vec2(str(tmp_path))                            # a folder without a model in it
