"""Precomputed teacher features: run the frozen teacher once, train the student where the teacher does not fit.

The teacher is frozen, so its layer-`l*` output `H_T [N, d_t]` of a sample never changes during training.
[`cache_teacher_features`] runs it once over a dataset (early exit at `teacher_layer`, no autograd) and writes the
features as sharded safetensors plus an index JSON; [`TeacherFeatureCache`] reads them back lazily (memory-mapped)
and [`CachedTeacherFeatures`] puts them into the dataset's samples as `teacher_features`, where training feeds them
to `model.encode_features(...)` with no teacher in memory.

Layout of a cache folder:
    teacher_features.index.json             # metadata + which shard holds which sample
    features-r00-00000.safetensors          # tensors named by sample index, each [N, d_t]
    features-r00-00001.safetensors ...      # (rNN: the process that wrote it)
Every file is written to a temporary name and renamed into place; the index is written last, so a folder with an
index is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional

import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .atomic import save_safetensors, write_json

INDEX_NAME = "teacher_features.index.json"
CACHE_FORMAT = "peft-ckt-teacher-features"
CACHE_VERSION = 1
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class _ShardWriter:
    """Accumulates per-sample tensors and flushes a shard whenever `max_shard_bytes` is reached."""

    def __init__(self, folder: str, rank: int, max_shard_bytes: int, metadata: dict[str, str]):
        self.folder, self.rank, self.max_shard_bytes, self.metadata = folder, rank, max_shard_bytes, metadata
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.num_shards = 0
        self.sample_to_shard: dict[str, str] = {}

    def add(self, index: int, features: torch.Tensor) -> None:
        self.pending[str(index)] = features.contiguous()
        self.pending_bytes += features.numel() * features.element_size()
        if self.pending_bytes >= self.max_shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"features-r{self.rank:02d}-{self.num_shards:05d}.safetensors"
        save_safetensors(self.pending, os.path.join(self.folder, name), self.metadata)
        self.sample_to_shard.update({key: name for key in self.pending})
        self.num_shards += 1
        self.pending, self.pending_bytes = {}, 0


def _default_teacher_inputs(batch: Mapping[str, Any]) -> Mapping[str, Any]:
    if "teacher_inputs" not in batch:
        raise KeyError("Each sample must hold a 'teacher_inputs' dict (or pass `teacher_inputs_fn`).")
    return batch["teacher_inputs"]


def _sample_indices(batch: Mapping[str, Any], offset: int, size: int) -> list[int]:
    index = batch.get("index") if isinstance(batch, Mapping) else None
    if isinstance(index, torch.Tensor):
        return [int(i) for i in index.tolist()]
    if isinstance(index, Sequence):
        return [int(i) for i in index]
    return list(range(offset, offset + size))


@torch.no_grad()
def cache_teacher_features(
    teacher: nn.Module,
    teacher_layer: str,
    dataset: Dataset,
    output_dir: str,
    *,
    teacher_output_index: Optional[int] = None,
    teacher_sequence_first: bool = False,
    dtype: str = "fp32",
    batch_size: int = 8,
    max_shard_size_mb: float = 512.0,
    teacher_inputs_fn: Callable[[Mapping[str, Any]], Mapping[str, Any]] = _default_teacher_inputs,
    collate_fn: Optional[Callable] = None,
    dataset_description: Optional[str] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TeacherFeatureCache:
    """Runs the frozen `teacher` up to `teacher_layer` over `dataset` and writes the features to `output_dir`.

    Under `accelerate launch` every process takes its share of the dataset and writes its own shards; the main
    process writes the index once all are done. The teacher is moved to the process's device.

    Args:
        teacher: the frozen teacher module (put it in the dtype you want it to run in).
        teacher_layer: dotted path of the layer whose output is cached (the CKT config's `teacher_layer`).
        teacher_output_index: the tuple element of that layer's output to cache (the config's `teacher_output_index`).
        teacher_sequence_first: that output is `[N, B, d_t]` (the config's `teacher_sequence_first`); cached batch-first.
        dataset: map-style dataset; samples hold `teacher_inputs` (see `teacher_inputs_fn`) and ideally `index`.
        output_dir: the cache folder (created).
        dtype: storage dtype: "fp32", "fp16" or "bf16".
        batch_size: samples per teacher forward.
        max_shard_size_mb: start a new shard file beyond this size.
        teacher_inputs_fn: maps a collated batch to the teacher's forward kwargs.
        dataset_description: stored in the index and checked by training (e.g. the dataset's name and seed).
        overwrite: replace an existing cache in `output_dir`.
    """
    from accelerate import PartialState

    from .teacher import TeacherFeatureExtractor
    from .teacher_ref import module_reference

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    state = PartialState()
    index_path = os.path.join(output_dir, INDEX_NAME)
    if os.path.exists(index_path) and not overwrite:
        raise FileExistsError(
            f"A teacher-feature cache already exists in {output_dir}; pass overwrite=True to replace it."
        )
    if state.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        if overwrite:  # stale shards of an earlier cache would otherwise linger next to the new ones
            for name in os.listdir(output_dir):
                if name.startswith("features-r") or name == INDEX_NAME or name.startswith("index.rank"):
                    os.remove(os.path.join(output_dir, name))
    state.wait_for_everyone()

    teacher.to(state.device)
    extractor = TeacherFeatureExtractor(teacher, teacher_layer, teacher_output_index)
    teacher_name, teacher_class = module_reference(teacher)
    storage_dtype = DTYPES[dtype]

    all_indices = list(range(len(dataset)))
    with state.split_between_processes(all_indices) as my_indices:
        subset = torch.utils.data.Subset(dataset, my_indices)
        loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
        metadata = {"format": CACHE_FORMAT, "teacher_layer": teacher_layer, "dtype": dtype}
        writer = _ShardWriter(output_dir, state.process_index, int(max_shard_size_mb * 2**20), metadata)
        hidden_size, num_tokens, offset = None, set(), 0
        bar = tqdm(
            total=len(my_indices),
            desc="Caching teacher features",
            unit="sample",
            disable=not (progress and state.is_main_process),
        )
        for batch in loader:
            features = extractor(teacher_inputs_fn(batch))  # [B, N, d_t], detached
            if teacher_sequence_first:
                features = features.transpose(0, 1).contiguous()
            indices = _sample_indices(batch, my_indices[0] + offset if my_indices else 0, features.shape[0])
            if len(indices) != features.shape[0]:
                raise ValueError(
                    f"batch holds {len(indices)} indices but the teacher returned {features.shape[0]} rows"
                )
            hidden_size = features.shape[-1]
            num_tokens.add(features.shape[1])
            for row, index in enumerate(indices):
                writer.add(index, features[row].to(device="cpu", dtype=storage_dtype))
            offset += features.shape[0]
            bar.update(features.shape[0])
        writer.flush()
        bar.close()

    partial = {"samples": writer.sample_to_shard, "hidden_size": hidden_size, "num_tokens": sorted(num_tokens)}
    write_json(os.path.join(output_dir, f"index.rank{state.process_index:02d}.json"), partial, sort_keys=True)
    state.wait_for_everyone()
    if state.is_main_process:
        samples: dict[str, str] = {}
        widths, token_counts = set(), set()
        for rank in range(state.num_processes):
            path = os.path.join(output_dir, f"index.rank{rank:02d}.json")
            with open(path) as f:
                part = json.load(f)
            samples.update(part["samples"])
            if part["hidden_size"] is not None:
                widths.add(part["hidden_size"])
            token_counts.update(part["num_tokens"])
            os.remove(path)
        if len(samples) != len(dataset):
            raise RuntimeError(f"Cached {len(samples)} samples, expected {len(dataset)}.")
        if len(widths) != 1:
            raise RuntimeError(f"Inconsistent teacher widths across processes: {sorted(widths)}.")
        index = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "metadata": {
                "teacher": teacher_name,
                "teacher_class": teacher_class,
                "teacher_layer": teacher_layer,
                "hidden_size": widths.pop(),
                "num_tokens": token_counts.pop() if len(token_counts) == 1 else None,
                "dtype": dtype,
                "num_samples": len(dataset),
                "dataset": dataset_description,
            },
            "samples": dict(sorted(samples.items(), key=lambda item: int(item[0]))),
        }
        write_json(index_path, index, sort_keys=True)
    state.wait_for_everyone()
    return TeacherFeatureCache(output_dir)


class TeacherFeatureCache:
    """Reads a cache folder written by [`cache_teacher_features`]: `cache[i] -> H_T [N, d_t]` of sample `i`.

    Shards are opened lazily (memory-mapped by safetensors) and kept open, so a DataLoader worker only touches the
    pages it reads.
    """

    def __init__(self, path: str):
        index_path = os.path.join(path, INDEX_NAME)
        if not os.path.isfile(index_path):
            raise FileNotFoundError(
                f"No teacher-feature cache in {path!r} (missing {INDEX_NAME}); write one with `peft-ckt cache-teacher`."
            )
        with open(index_path) as f:
            index = json.load(f)
        if index.get("format") != CACHE_FORMAT:
            raise ValueError(f"{index_path} is not a peft-ckt teacher-feature index.")
        if index.get("version", 0) > CACHE_VERSION:
            raise ValueError(
                f"{index_path} has format version {index['version']}; this peft-ckt reads <= {CACHE_VERSION}."
            )
        self.path = path
        self.metadata: dict[str, Any] = index["metadata"]
        self._sample_to_shard: dict[str, str] = index["samples"]
        self._handles: dict[str, Any] = {}

    @property
    def teacher_layer(self) -> str:
        return self.metadata["teacher_layer"]

    @property
    def hidden_size(self) -> int:
        return int(self.metadata["hidden_size"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.metadata["dtype"]]

    def __len__(self) -> int:
        return len(self._sample_to_shard)

    def __getitem__(self, index: int) -> torch.Tensor:
        key = str(int(index))
        shard = self._sample_to_shard.get(key)
        if shard is None:
            raise IndexError(f"sample {index} is not in the teacher-feature cache {self.path}")
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(os.path.join(self.path, shard), framework="pt")
        features = handle.get_tensor(key)
        # Caught here, where the features enter training, rather than as a NaN loss steps later.
        if not bool(torch.isfinite(features).all()):
            raise ValueError(
                f"Sample {index} in the teacher-feature cache shard {os.path.join(self.path, shard)} contains NaN or "
                "inf: rebuild the cache (`peft-ckt cache-teacher ... --overwrite`)."
            )
        return features

    def __getstate__(self) -> dict:  # DataLoader workers reopen the shards themselves
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def check_compatible(
        self, num_samples: int, teacher_layer: Optional[str] = None, dataset_description: Optional[str] = None
    ) -> None:
        """Raises a ValueError naming the mismatch when this cache was not made for the given data/layer."""
        if len(self) != num_samples:
            raise ValueError(
                f"The teacher-feature cache {self.path} holds {len(self)} samples; the dataset has {num_samples}."
            )
        if teacher_layer is not None and teacher_layer != self.teacher_layer:
            raise ValueError(
                f"The cache holds the output of teacher layer {self.teacher_layer!r}, but the CKT config uses "
                f"{teacher_layer!r}."
            )
        cached = self.metadata.get("dataset")
        if dataset_description is not None and cached is not None and cached != dataset_description:
            raise ValueError(f"The cache was made for dataset {cached!r}, not {dataset_description!r}.")


class CachedTeacherFeatures(Dataset):
    """Wraps a dataset: each sample gets `teacher_features [N, d_t]` from the cache and loses `drop_keys`
    (by default the teacher's raw inputs, which training no longer needs)."""

    def __init__(self, dataset: Dataset, cache: TeacherFeatureCache, drop_keys: Iterable[str] = ("teacher_inputs",)):
        cache.check_compatible(len(dataset))
        self.dataset, self.cache, self.drop_keys = dataset, cache, tuple(drop_keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = {key: value for key, value in self.dataset[index].items() if key not in self.drop_keys}
        sample["teacher_features"] = self.cache[sample.get("index", index)]
        return sample
