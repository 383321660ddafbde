"""Offline instruction tokenizer of the reference world action model: a word vocabulary, nothing from the Hub.

Instructions are lower-cased and split into words; each word known to the vocabulary gets its id, every other word
the `<unk>` id, and the sequence is padded (`<pad>`) or cut to `max_length`. The vocabulary is built from the
instructions a model is trained on, so a model pretrained on rewritten instructions (the LIBERO-Plus language
perturbation) knows more words than one pretrained on the original instructions only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    """Lower-cased words (letters and digits) of an instruction."""
    return _WORD.findall(text.lower())


def build_vocabulary(instructions: Iterable[str]) -> list[str]:
    """`[<pad>, <unk>, words...]`, the words sorted so that the vocabulary does not depend on data order."""
    words = sorted({word for text in instructions for word in split_words(text)})
    return [PAD, UNK, *words]


class InstructionTokenizer:
    """Words -> ids `[B, max_length]` (int64), padded with 0 (`<pad>`), unknown words -> 1 (`<unk>`)."""

    def __init__(self, vocabulary: Sequence[str], max_length: int = 16) -> None:
        if len(vocabulary) < 2 or vocabulary[0] != PAD or vocabulary[1] != UNK:
            raise ValueError(f"The vocabulary must start with {PAD!r}, {UNK!r}; got {list(vocabulary[:2])}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1; got {max_length}")
        self.vocabulary = list(vocabulary)
        self.max_length = max_length
        self._ids = {word: index for index, word in enumerate(self.vocabulary)}

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str) -> list[int]:
        ids = [self._ids.get(word, 1) for word in split_words(text)][: self.max_length]
        return ids + [0] * (self.max_length - len(ids))

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return torch.tensor([self.encode(text) for text in texts], dtype=torch.long)

    def unknown_fraction(self, text: str) -> float:
        """Share of the instruction's words the vocabulary does not know (0 for an empty instruction)."""
        words = split_words(text)
        return sum(word not in self._ids for word in words) / len(words) if words else 0.0
