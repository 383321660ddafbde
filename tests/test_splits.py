"""Init-state splits: disjoint by construction, and a setting chosen on test init states is refused."""

import pytest

from peft_ckt.libero.splits import InitStateSplits, SplitViolationError, select_on_validation


def test_default_splits_are_disjoint_and_cover_the_fifty_states():
    splits = InitStateSplits()
    expected = ["train", "train", "validation", "validation", "test", "test"]
    assert [splits.split_of(i) for i in (0, 29, 30, 39, 40, 49)] == expected
    assert splits.split_of(50) is None
    assert splits.take("test", 4) == [40, 41, 42, 43]
    with pytest.raises(ValueError, match="has 10 init states"):
        splits.take("validation", 11)


def test_overlapping_ranges_are_refused():
    with pytest.raises(ValueError, match="validation and test ranges overlap"):
        InitStateSplits(validation=(30, 42), test=(40, 50))
    with pytest.raises(ValueError, match="train"):
        InitStateSplits(train=(5, 5))


def test_a_stage_reading_another_splits_states_is_refused():
    splits = InitStateSplits()
    splits.check("train", [0, 5, 29], "pretraining")
    with pytest.raises(
        SplitViolationError, match=r"pretraining may read train init states 0-29 only; got \[40\] \(split: test\)"
    ):
        splits.check("train", [0, 40], "pretraining")


def test_a_setting_chosen_on_test_init_states_is_refused():
    splits = InitStateSplits()
    scores = {"lr=1e-3": 0.2, "lr=4e-3": 0.1}
    best, table = select_on_validation(list(scores), scores.get, "validation", splits, [30, 31])
    assert best == "lr=4e-3" and [row["score"] for row in table] == [0.2, 0.1]
    with pytest.raises(SplitViolationError, match="validation split only"):
        select_on_validation(list(scores), scores.get, "test", splits, [40, 41])
    # Declared as validation but scored on test states: refused all the same.
    with pytest.raises(SplitViolationError, match="choosing a setting"):
        select_on_validation(list(scores), scores.get, "validation", splits, [30, 45])
