"""The time split of a personalised model, and the frames each side of it may read."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dithead.training.split import (FrameRangeView, held_out_frames, make_split, reference_clips, split_by_time,
                                    training_clips, valid_frames)


class FakeClip(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.valid)


def clip(name: str, frames: int, no_face: tuple[int, ...] = ()) -> FakeClip:
    valid = np.ones(frames, dtype=bool)
    valid[list(no_face)] = False
    return FakeClip(name=name, meta={}, valid=valid)


def test_time_split_holds_out_each_clips_end_after_a_gap():
    split = split_by_time([clip("b", 200), clip("a", 1000)], val_fraction=0.2, gap_frames=50)
    assert split.mode == "time"
    assert split.validation_frames == {"a": [800, 1000], "b": [160, 200]}
    assert split.train_frames == {"a": [0, 750], "b": [0, 110]}          # 50 frames before the cut unused
    assert split.train == split.validation == ["a", "b"]
    assert split.to_json()["validation_frames"]["a"] == [800, 1000]


def test_time_split_gap_comes_from_seconds_and_fps():
    params = {"mode": "time", "val_fraction": 0.25, "gap_seconds": 2.0}
    split = make_split([clip("a", 400)], params, seed=0, fps=30)
    assert split.validation_frames["a"] == [300, 400] and split.train_frames["a"] == [0, 240]


@pytest.mark.parametrize("fraction,gap,match", [(0.0, 10, "val_fraction"), (1.0, 10, "val_fraction"),
                                                (0.2, -1, "gap_seconds"), (0.5, 60, "too short")])
def test_time_split_rejects_what_leaves_nothing_to_train_or_hold_out(fraction, gap, match):
    with pytest.raises(ValueError, match=match):
        split_by_time([clip("a", 100)], val_fraction=fraction, gap_frames=gap)


def test_unknown_split_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="split.mode must be one of identity, time"):
        make_split([clip("a", 100)], {"mode": "random"}, seed=0, fps=25)


def test_training_reads_only_the_training_range():
    clips = [clip("a", 300, no_face=(5,))]
    split = split_by_time(clips, val_fraction=0.2, gap_frames=10)      # train [0, 230), held out [240, 300)
    views = training_clips(clips, split)
    rows = valid_frames(views)
    assert rows[:, 1].min() == 0 and rows[:, 1].max() == 229 and 5 not in rows[:, 1]
    assert len(views[0]) == 300 and views[0].name == "a"             # everything else is the clip's own
    held = held_out_frames(clips, split)
    assert held[:, 1].tolist() == list(range(240, 300))
    assert not set(rows[:, 1]) & set(held[:, 1])


def test_held_out_frames_take_references_from_the_training_part_only():
    from dithead.inference.sampling import pick_reference_index

    clips = [clip("a", 500)]
    split = split_by_time(clips, val_fraction=0.2, gap_frames=50)      # train [0, 350), held out [400, 500)
    (reference_view,) = reference_clips(clips, split)
    rng = np.random.default_rng(0)
    picks = {pick_reference_index(500, frame, rng, 60, reference_view.valid) for frame in range(400, 500)}
    assert max(picks) < 350 and len(picks) > 20


def test_identity_split_references_come_from_the_unseen_person_themselves():
    clips = [clip("alice", 100), clip("bob", 100)]
    split = make_split(clips, {"mode": "identity", "val_identities": ["bob"]}, seed=0, fps=25)
    views = reference_clips(clips, split)
    assert isinstance(views[0], FrameRangeView) and views[1] is clips[1]
    assert held_out_frames(clips, split)[:, 0].tolist() == [1] * 100
