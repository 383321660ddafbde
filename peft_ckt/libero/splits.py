"""Train / validation / test splits of a LIBERO task's init states, enforced where data is drawn and settings chosen.

Every LIBERO task ships a fixed list of init states (50 per task in the standard suites). An experiment that trains
on some of them, chooses its settings on others and reports rollouts on the rest must keep the three apart:
`InitStateSplits.check` refuses a stage that reads another split's states, and `select_on_validation` refuses to
choose a setting on anything but the validation split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

SPLITS = ("train", "validation", "test")
Candidate = TypeVar("Candidate")


class SplitViolationError(ValueError):
    """A stage read init states of a split it must not use (e.g. a setting chosen on test states)."""


@dataclass(frozen=True)
class InitStateSplits:
    """Disjoint half-open ranges `[start, stop)` of init-state indices per split (the same for every task)."""

    train: tuple[int, int] = (0, 30)
    validation: tuple[int, int] = (30, 40)
    test: tuple[int, int] = (40, 50)

    def __post_init__(self) -> None:
        ranges = [(name, tuple(getattr(self, name))) for name in SPLITS]
        for name, (start, stop) in ranges:
            if not 0 <= start < stop:
                raise ValueError(f"InitStateSplits.{name}: need 0 <= start < stop; got [{start}, {stop})")
        ordered = sorted(ranges, key=lambda item: item[1][0])
        for (first, (_, stop)), (second, (start, _)) in zip(ordered, ordered[1:]):
            if start < stop:
                raise ValueError(f"InitStateSplits: the {first} and {second} ranges overlap")

    def states(self, split: str) -> range:
        start, stop = getattr(self, _check_name(split))
        return range(start, stop)

    def split_of(self, init_index: int) -> str | None:
        """The split an init state belongs to (None: in no split)."""
        return next((name for name in SPLITS if init_index in self.states(name)), None)

    def check(self, split: str, init_indices: Iterable[int], purpose: str) -> None:
        """Raises `SplitViolationError` unless every init state is in `split`; `purpose` names the stage in the error."""
        allowed = self.states(split)
        wrong = sorted({int(i) for i in init_indices if int(i) not in allowed})
        if wrong:
            found = sorted({str(self.split_of(i)) for i in wrong})
            raise SplitViolationError(
                f"{purpose} may read {split} init states {allowed.start}-{allowed.stop - 1} only; got {wrong[:5]} "
                f"(split: {', '.join(found)})"
            )

    def take(self, split: str, count: int, offset: int = 0) -> list[int]:
        """`count` init states of `split` from its start (+ `offset`); an error if the split has fewer."""
        states = self.states(split)
        chosen = list(states[offset : offset + count])
        if count < 0 or offset < 0 or len(chosen) < count:
            raise ValueError(
                f"the {split} split has {len(states)} init states; asked for {count} from offset {offset}"
            )
        return chosen


def _check_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def select_on_validation(
    candidates: Sequence[Candidate],
    score: Callable[[Candidate], float],
    split: str,
    splits: InitStateSplits,
    init_indices: Iterable[int],
) -> tuple[Candidate, list[dict[str, Any]]]:
    """Chooses the candidate setting with the lowest `score` (e.g. validation action error), refusing to choose on
    any data outside the validation split: `split` must be "validation" and every init state the scores read
    (`init_indices`) must lie in it. Returns the winner and every candidate's score, in order."""
    if split != "validation":
        raise SplitViolationError(f"settings are chosen on the validation split only; asked to choose on {split!r}")
    splits.check("validation", init_indices, "choosing a setting")
    if not candidates:
        raise ValueError("no candidate settings to choose from")
    scores = [{"candidate": candidate, "score": float(score(candidate))} for candidate in candidates]
    best = min(range(len(scores)), key=lambda i: scores[i]["score"])
    return candidates[best], scores
