"""Demonstration datasets in the LeRobot format: a writer (v3.0), and one reader for v3.0 and v2.x folders.

Layout written (LeRobot `v3.0`, the format of LeRobot >= 0.4 and of the Hub's LIBERO datasets; images embedded in the
parquet files as PNG, like the Hub's `*_image` datasets):

    root/meta/info.json                         features, fps, counts, path templates (written last)
    root/meta/tasks.parquet                     task strings (index) -> task_index
    root/meta/episodes/chunk-000/file-000.parquet   one row per episode: length, data file, frame range, `success`...
    root/meta/stats.json                        mean / std / min / max / count of every numeric feature and camera
    root/meta/episodes.jsonl                    the collection's journal (see below); LeRobot ignores it
    root/data/chunk-000/file-000.parquet        frames of several episodes (a new file past `data_files_size_in_mb`)

Columns: `observation.state [8]` float32, `observation.images.image` and `observation.images.wrist_image` (HF Image),
`action [7]` float32, `timestamp`, `frame_index`, `episode_index`, `index`, `task_index`.

Crash safety: every data file is rewritten whole through `peft_ckt.atomic` when an episode is added, then the
episode's line is appended to `meta/episodes.jsonl`; that line is what records the episode. The v3.0 metadata and,
last, `info.json` are written by `finalize()`, so a folder without `info.json` is an interrupted collection that
`resume=True` continues (frames of an episode without a journal line are dropped).

`load_lerobot_dataset` reads that layout, the v2.1 folders this package wrote before, and the other LeRobot layouts
found on the Hub (`lerobot/libero`, `HuggingFaceVLA/libero`, `lerobot/libero_plus` once downloaded): `v2.x` (one
parquet per episode, optional per-episode MP4 videos) and `v3.0` (several episodes per parquet / MP4 file), with the
column aliases of the original LIBERO conversions (`image`, `wrist_image`, `state`, `actions`). The WAM's training
data (`peft_ckt.wam.data.read_episodes`) goes through the same reader.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_json

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder (LeRobot's default)
DATA_FILES_SIZE_IN_MB = 100  # a data file takes episodes until it reaches this size (LeRobot's default)
FPS = 20  # LIBERO's control frequency
STATE_NAMES = [
    "eef_x",
    "eef_y",
    "eef_z",
    "eef_axis_angle_x",
    "eef_axis_angle_y",
    "eef_axis_angle_z",
    "gripper_left",
    "gripper_right",
]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
# Names used by other LIBERO conversions on the Hub -> LeRobot names.
COLUMN_ALIASES = {
    "image": "observation.images.image",
    "wrist_image": "observation.images.wrist_image",
    "state": "observation.state",
    "actions": "action",
}
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
LEGACY_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"  # v2.1
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
# At most this many frames per episode enter the camera statistics (decoding every PNG is not needed for a mean).
STATS_IMAGES_PER_EPISODE = 16


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_image(cell: Any) -> np.ndarray:
    """An HF `Image` cell (`{"bytes", "path"}`, raw bytes or a PIL image) as `[H, W, 3]` uint8."""
    from PIL import Image

    if hasattr(cell, "convert"):
        return np.asarray(cell.convert("RGB"))
    if isinstance(cell, dict):
        cell = cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"]).read_bytes()
    return np.asarray(Image.open(io.BytesIO(cell)).convert("RGB"))


def _feature_stats(values: np.ndarray) -> dict[str, list]:
    return {
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "count": [len(values)],
    }


class LeRobotDatasetWriter:
    """Append episodes to a LeRobot v3.0 dataset folder; `finalize()` writes the metadata.

    Every episode is durable once `add_episode` returns: its frames are in a data file and its line is appended to
    `meta/episodes.jsonl`. `meta/info.json`, written last by `finalize()`, marks a complete dataset; a folder
    without it is an interrupted one, which `resume=True` continues (frames without an episode line are discarded).

    Args:
        root: dataset folder (created; must be empty or absent unless `resume=True`).
        image_keys: camera keys (`observation.images.<key>`).
        image_size: `(height, width)` of the frames.
        robot_type, fps: recorded in info.json.
        resume: continue (or append to) the dataset already in `root`.
        data_files_size_in_mb: a data file takes episodes until it reaches this size.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_keys: tuple[str, ...] = ("image", "wrist_image"),
        image_size: tuple[int, int] = (128, 128),
        fps: int = FPS,
        robot_type: str = "panda",
        resume: bool = False,
        data_files_size_in_mb: float = DATA_FILES_SIZE_IN_MB,
    ) -> None:
        from .records import RecordLog

        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()) and not resume:
            raise FileExistsError(
                f"Dataset folder {self.root} is not empty: pass resume=True to continue writing to it, or use a "
                f"new folder"
            )
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        info_file = self.root / "meta" / "info.json"
        if info_file.is_file():
            version = json.loads(info_file.read_text()).get("codebase_version")
            if version != CODEBASE_VERSION:
                raise ValueError(
                    f"{self.root} is a LeRobot {version} dataset: this writer appends to {CODEBASE_VERSION} "
                    f"datasets only; write into a new folder"
                )
        self.image_keys = tuple(image_keys)
        self.image_size = tuple(image_size)
        self.fps = fps
        self.robot_type = robot_type
        self.data_files_size_in_mb = data_files_size_in_mb
        self.tasks: dict[str, int] = {}
        self.total_frames = 0
        self._log = RecordLog(self.root / "meta" / "episodes.jsonl")
        self.episodes: list[dict[str, Any]] = self._log.open()
        self._complete_on_disk = info_file.is_file()
        # The data file episodes are appended to, held in memory so that adding one does not read it back.
        self._file = (0, 0)
        self._table = None
        self._restore()

    # -- resume
    def _restore(self) -> None:
        """Rebuild the writer's state from the journal; drop what a killed run left beyond its last episode."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if self.episodes and "data/chunk_index" not in self.episodes[0]:
            raise ValueError(
                f"{self.root} was started by an earlier peft-ckt in the LeRobot v2.1 layout (one parquet file per "
                f"episode): it cannot be continued in v3.0; collect into a new folder"
            )
        for episode in self.episodes:
            for task in episode["tasks"]:
                self.tasks.setdefault(task, len(self.tasks))
            self.total_frames += episode["length"]
        data = self.root / "data"
        for tmp in data.glob("chunk-*/*.tmp*") if data.is_dir() else []:
            tmp.unlink()
        files = sorted(data.glob("chunk-*/file-*.parquet")) if data.is_dir() else []
        recorded = len(self.episodes)
        if self.episodes:
            last = self.episodes[-1]
            self._file = (last["data/chunk_index"], last["data/file_index"])
        for path in files:
            chunk, file = int(path.parent.name[len("chunk-") :]), int(path.stem[len("file-") :])
            if (chunk, file) > self._file or not self.episodes:
                path.unlink()  # holds only episodes that were never recorded
        path = self.root / DATA_PATH.format(chunk_index=self._file[0], file_index=self._file[1])
        if self.episodes:
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: {self.root / 'meta' / 'episodes.jsonl'} records episodes in it"
                )
            table = pq.read_table(path)
            keep = pc.less(table.column("episode_index"), recorded)
            if not pc.all(keep).as_py():
                table = table.filter(keep)
                self._write_table(path, table)
            self._table = table

    # -- writing
    def _features(self):
        from datasets import Features, Image, Sequence, Value

        features = {"observation.state": Sequence(Value("float32"), length=8)}
        for key in self.image_keys:
            features[f"observation.images.{key}"] = Image()
        features.update(
            {
                "action": Sequence(Value("float32"), length=7),
                "timestamp": Value("float32"),
                "frame_index": Value("int64"),
                "episode_index": Value("int64"),
                "index": Value("int64"),
                "task_index": Value("int64"),
            }
        )
        return Features(features)

    @staticmethod
    def _write_table(path: Path, table) -> None:
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="snappy")

    def add_episode(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        images: dict[str, list[bytes | np.ndarray]],
        task: str,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Write one episode: `states [T, 8]`, `actions [T, 7]`, `images[key]` T frames (PNG bytes or arrays)."""
        import pyarrow as pa
        from datasets import Dataset

        states = np.asarray(states, dtype=np.float32)
        actions = np.asarray(actions, dtype=np.float32)
        length = len(states)
        if states.ndim != 2 or states.shape[1] != 8 or actions.shape != (length, 7):
            raise ValueError(f"Expected states [T, 8] and actions [T, 7]; got {states.shape} and {actions.shape}")
        missing = [k for k in self.image_keys if k not in images]
        if missing:
            raise ValueError(f"Episode lacks images for {missing}")
        episode_index = len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        columns: dict[str, Any] = {"observation.state": states.tolist()}
        for key in self.image_keys:
            frames = images[key]
            if len(frames) != length:
                raise ValueError(f"{key}: {len(frames)} frames for {length} steps")
            columns[f"observation.images.{key}"] = [
                {"bytes": f if isinstance(f, bytes) else encode_png(f), "path": None} for f in frames
            ]
        columns.update(
            {
                "action": actions.tolist(),
                "timestamp": (np.arange(length) / self.fps).astype(np.float32).tolist(),
                "frame_index": list(range(length)),
                "episode_index": [episode_index] * length,
                "index": list(range(self.total_frames, self.total_frames + length)),
                "task_index": [task_index] * length,
            }
        )
        if self._log.closed:  # adding after finalize()
            self._log.open()
        if self._complete_on_disk:
            # The dataset changes: it is complete again only when finalize() rewrites info.json.
            (self.root / "meta" / "info.json").unlink(missing_ok=True)
            self._complete_on_disk = False
        # The arrow table carries the HF features in its schema metadata, so `datasets` decodes images on load.
        table = Dataset.from_dict(columns, features=self._features()).data.table
        if self._table is not None and self._table.nbytes / 2**20 >= self.data_files_size_in_mb:
            chunk, file = self._file
            self._file = (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)
            self._table = None
        combined = table if self._table is None else pa.concat_tables([self._table, table])
        self._write_table(self.root / DATA_PATH.format(chunk_index=self._file[0], file_index=self._file[1]), combined)
        self._table = combined
        # The journal line comes last: an episode is recorded only once its frames are on disk.
        episode = {
            "episode_index": episode_index,
            "tasks": [task],
            "length": length,
            "data/chunk_index": self._file[0],
            "data/file_index": self._file[1],
            "dataset_from_index": self.total_frames,
            "dataset_to_index": self.total_frames + length,
            **(extra or {}),
        }
        self._log.append(episode)
        self.episodes.append(episode)
        self.total_frames += length
        return episode_index

    def _info(self) -> dict[str, Any]:
        height, width = self.image_size
        features: dict[str, Any] = {
            "observation.state": {"dtype": "float32", "shape": [8], "names": STATE_NAMES},
        }
        for key in self.image_keys:
            features[f"observation.images.{key}"] = {
                "dtype": "image",
                "shape": [height, width, 3],
                "names": ["height", "width", "channel"],
            }
        features["action"] = {"dtype": "float32", "shape": [7], "names": ACTION_NAMES}
        features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for key in INDEX_FEATURES[1:]:
            features[key] = {"dtype": "int64", "shape": [1], "names": None}
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": self.data_files_size_in_mb,
            "video_files_size_in_mb": 200,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": features,
        }

    def _statistics(self) -> dict[str, Any]:
        """LeRobot's `stats.json`: per feature mean / std / min / max / count; cameras per channel `[3, 1, 1]` in
        [0, 1], from up to `STATS_IMAGES_PER_EPISODE` frames per episode."""
        import pyarrow.parquet as pq

        numeric = ["observation.state", "action", *INDEX_FEATURES]
        cameras = [f"observation.images.{k}" for k in self.image_keys]
        values: dict[str, list[np.ndarray]] = {k: [] for k in numeric + cameras}
        for path in sorted((self.root / "data").glob("chunk-*/file-*.parquet")):
            table = pq.read_table(path)
            for key in numeric:
                column = table.column(key).to_pylist()
                values[key].append(np.asarray(column, dtype=np.float64).reshape(len(column), -1))
            episode_column = np.asarray(table.column("episode_index"))
            for episode in np.unique(episode_column):
                rows = np.flatnonzero(episode_column == episode)
                rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), STATS_IMAGES_PER_EPISODE)).astype(int)]
                for key in cameras:
                    cells = table.column(key).take(rows).to_pylist()
                    pixels = np.stack([decode_image(c) for c in cells]).reshape(-1, 3) / 255.0
                    values[key].append(pixels)
        stats: dict[str, Any] = {}
        for key, chunks in values.items():
            if not chunks:
                continue
            entry = _feature_stats(np.concatenate(chunks))
            if key in cameras:  # channel-first, broadcastable over [3, H, W] (LeRobot's layout)
                entry = {k: v if k == "count" else [[[x]] for x in v] for k, v in entry.items()}
                entry["count"] = [sum(e["length"] for e in self.episodes)]
            stats[key] = entry
        return stats

    def finalize(self) -> Path:
        """Write meta/tasks.parquet, meta/episodes/, stats.json and, last, info.json; returns the dataset root."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = self.root / "meta"
        ordered = sorted(self.tasks, key=self.tasks.get)
        tasks = pd.DataFrame({"task_index": [self.tasks[t] for t in ordered]}, index=pd.Index(ordered, name="task"))
        with atomic_path(meta / "tasks.parquet") as tmp:
            tasks.to_parquet(tmp)
        rows = [{**e, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0} for e in self.episodes]
        if rows:
            path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                pq.write_table(pa.Table.from_pylist(rows), tmp)
        write_json(meta / "stats.json", self._statistics())
        # Last: info.json marks the dataset complete (episodes.jsonl is already complete, appended episode by episode).
        write_json(meta / "info.json", self._info())
        self._complete_on_disk = True
        self._log.close()
        return self.root


# ----------------------------------------------------------------------------- loading
class LeRobotLiberoDataset:
    """A LeRobot-format dataset on disk, read with `datasets` (no LeRobot install needed).

    `hf_dataset` is the `datasets.Dataset` of all frames (images decode to PIL through the HF `Image` feature);
    `dataset[i]` returns one frame as numpy arrays (`observation.images.*` as `[H, W, 3]` uint8, decoded from the
    MP4 files for video features) plus its `task` string.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        info_file = self.root / "meta" / "info.json"
        if not info_file.is_file():
            if (self.root / "meta" / "episodes.jsonl").is_file():
                from .records import read_records

                count = len(read_records(self.root / "meta" / "episodes.jsonl"))
                raise FileNotFoundError(
                    f"{self.root} is an incomplete dataset: its collection stopped after {count} episode(s), before "
                    f"meta/info.json was written; finish it with the same `peft-ckt collect-libero` command plus "
                    f"--resume"
                )
            raise FileNotFoundError(f"{info_file} not found: not a LeRobot dataset folder")
        self.info: dict[str, Any] = json.loads(info_file.read_text())
        self.version = str(self.info.get("codebase_version", "v2.1"))
        self.fps = float(self.info.get("fps", FPS))
        self.features: dict[str, Any] = {COLUMN_ALIASES.get(k, k): v for k, v in self.info.get("features", {}).items()}
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        self.video_keys = [k for k, v in self.features.items() if v.get("dtype") == "video"]
        self._hf_dataset = None
        self._video_cache: dict[str, np.ndarray] = {}

    @property
    def is_v3(self) -> bool:
        return self.version.startswith("v3")

    def _load_tasks(self) -> dict[int, str]:
        meta = self.root / "meta"
        if (meta / "tasks.parquet").is_file() and (self.is_v3 or not (meta / "tasks.jsonl").is_file()):
            import pyarrow.parquet as pq

            # v3.0: the task strings are the table's (pandas) index, `task_index` its column.
            table = pq.read_table(meta / "tasks.parquet").to_pandas()
            if "task" in table.columns:
                return {int(i): t for t, i in zip(table["task"], table["task_index"])}
            return {int(i): str(t) for t, i in zip(table.index, table["task_index"])}
        if (meta / "tasks.jsonl").is_file():
            rows = [json.loads(line) for line in (meta / "tasks.jsonl").read_text().splitlines() if line.strip()]
            return {int(r["task_index"]): r["task"] for r in rows}
        return {}

    def _load_episodes(self) -> list[dict[str, Any]]:
        meta = self.root / "meta"
        files = sorted((meta / "episodes").glob("*/*.parquet"))
        if files and (self.is_v3 or not (meta / "episodes.jsonl").is_file()):
            import pyarrow.parquet as pq

            rows: list[dict[str, Any]] = []
            for file in files:
                table = pq.read_table(file)
                # Per-episode statistics (LeRobot's `stats/...` columns) are not needed to read frames.
                table = table.select([c for c in table.column_names if not c.startswith("stats/")])
                rows.extend(table.to_pylist())
            return sorted(rows, key=lambda r: r["episode_index"])
        if (meta / "episodes.jsonl").is_file():
            return [json.loads(line) for line in (meta / "episodes.jsonl").read_text().splitlines() if line.strip()]
        return []

    def data_files(self) -> list[Path]:
        files = sorted((self.root / "data").glob("*/*.parquet"))
        if not files:
            raise FileNotFoundError(f"No parquet files under {self.root / 'data'}")
        return files

    @property
    def hf_dataset(self):
        """All frames as a `datasets.Dataset` (loaded on first use: `datasets` copies the files into its cache)."""
        if self._hf_dataset is None:
            self._hf_dataset = self._load_frames()
        return self._hf_dataset

    def _load_frames(self):
        from datasets import Image, load_dataset

        dataset = load_dataset("parquet", data_files=[str(p) for p in self.data_files()], split="train")
        renames = {old: new for old, new in COLUMN_ALIASES.items() if old in dataset.column_names}
        if renames:
            dataset = dataset.rename_columns(renames)
        for key, spec in self.features.items():
            if (
                spec.get("dtype") == "image"
                and key in dataset.column_names
                and not isinstance(dataset.features[key], Image)
            ):
                dataset = dataset.cast_column(key, Image())
        return dataset

    def episode_arrays(self) -> list[dict[str, Any]]:
        """Every episode as arrays, read straight from the parquet files (no `datasets` cache).

        One dict per episode: `state [T, d]`, `action [T, a]` float32, one `[T, H, W, 3]` uint8 array per camera
        under its short name (`image`, `wrist_image`), `task`, `episode_index`, and the episode's metadata
        (`success`, `task_id`, `image_stride`, ... when recorded; not LeRobot's file bookkeeping).
        """
        import pyarrow.parquet as pq

        metadata = {int(e["episode_index"]): e for e in self.episodes}
        skip = ("data/", "videos/", "meta/", "stats/", "dataset_from_index", "dataset_to_index")
        episodes: list[dict[str, Any]] = []
        for file in self.data_files():
            table = pq.read_table(file)
            table = table.rename_columns([COLUMN_ALIASES.get(c, c) for c in table.column_names])
            column = np.asarray(table.column("episode_index"))
            for index in dict.fromkeys(column.tolist()):  # episodes in file order
                part = table.take(np.flatnonzero(column == index)).to_pydict()
                meta = {k: v for k, v in metadata.get(int(index), {}).items() if not k.startswith(skip)}
                if "task" in part:
                    task = part["task"][0]
                elif "task_index" in part:
                    task = self.tasks.get(int(part["task_index"][0]), "")
                else:
                    task = (meta.get("tasks") or [""])[0]
                episode = {
                    **meta,
                    "episode_index": int(index),
                    "task": task,
                    "state": np.asarray(part["observation.state"], dtype=np.float32),
                    "action": np.asarray(part["action"], dtype=np.float32),
                }
                for key, spec in self.features.items():
                    if not key.startswith("observation.images."):
                        continue
                    name = key[len("observation.images.") :]
                    if spec.get("dtype") == "video":
                        episode[name] = np.stack(
                            [self._video_frame(key, int(index), float(t)) for t in part["timestamp"]]
                        )
                    elif key in part:
                        episode[name] = np.stack([decode_image(c) for c in part[key]])
                episodes.append(episode)
        return sorted(episodes, key=lambda e: e["episode_index"])

    def __len__(self) -> int:
        return len(self.hf_dataset)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes) if self.episodes else len(set(self.hf_dataset["episode_index"]))

    def episode_indices(self, episode_index: int) -> list[int]:
        """Frame positions of one episode in `hf_dataset`."""
        column = np.asarray(self.hf_dataset["episode_index"])
        return np.flatnonzero(column == episode_index).tolist()

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.hf_dataset[int(index)]
        item: dict[str, Any] = {}
        for key, value in row.items():
            if key.startswith("observation.images."):
                item[key] = decode_image(value) if hasattr(value, "convert") else np.asarray(value)
            elif isinstance(value, list):
                item[key] = np.asarray(value, dtype=np.float32)
            else:
                item[key] = value
        for key in self.video_keys:
            item[key] = self._video_frame(key, int(row["episode_index"]), float(row["timestamp"]))
        if "task_index" in row and "task" not in item:
            item["task"] = self.tasks.get(int(row["task_index"]), "")
        return item

    def _video_file_and_offset(self, key: str, episode_index: int) -> tuple[Path, float]:
        template = self.info.get("video_path")
        if not template:
            raise ValueError(f"{key} is a video feature but info.json has no video_path")
        chunks_size = int(self.info.get("chunks_size", CHUNKS_SIZE))
        if self.is_v3:
            episode = next(e for e in self.episodes if e["episode_index"] == episode_index)
            path = template.format(
                video_key=key,
                chunk_index=episode[f"videos/{key}/chunk_index"],
                file_index=episode[f"videos/{key}/file_index"],
            )
            return self.root / path, float(episode[f"videos/{key}/from_timestamp"])
        path = template.format(episode_chunk=episode_index // chunks_size, video_key=key, episode_index=episode_index)
        return self.root / path, 0.0

    def _video_frame(self, key: str, episode_index: int, timestamp: float) -> np.ndarray:
        import imageio.v2 as imageio

        path, offset = self._video_file_and_offset(key, episode_index)
        if str(path) not in self._video_cache:
            self._video_cache.clear()  # keep one decoded file in memory
            with imageio.get_reader(str(path), format="ffmpeg") as reader:
                self._video_cache[str(path)] = np.stack([np.asarray(f) for f in reader])
        frames = self._video_cache[str(path)]
        position = int(round((offset + timestamp) * self.fps))
        return frames[min(position, len(frames) - 1)]


def load_lerobot_dataset(root: str | os.PathLike) -> LeRobotLiberoDataset:
    """Open a LeRobot-format LIBERO dataset folder (written here, or downloaded from the Hub)."""
    return LeRobotLiberoDataset(root)
