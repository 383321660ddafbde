"""Demonstration datasets in the LeRobot / Hugging Face schema: a writer, and a loader that also reads the Hub's.

Layout written (LeRobot `v2.1`, images embedded in the parquet files as PNG, like the Hub's `*_image` datasets):

    root/meta/info.json                     features, fps, counts, path templates
    root/meta/tasks.jsonl                   {"task_index", "task"}
    root/meta/episodes.jsonl                {"episode_index", "tasks", "length", "success", ...}
    root/meta/stats.json                    mean / std / min / max of state and action
    root/data/chunk-000/episode_000000.parquet

Columns: `observation.state [8]` float32, `observation.images.image` and `observation.images.wrist_image` (HF Image),
`action [7]` float32, `timestamp`, `frame_index`, `episode_index`, `index`, `task_index`, and `task` (the instruction,
so that plain `datasets` reads it without the metadata). For datasets without a `task` column the loader adds it
from `meta/tasks`.

`load_lerobot_dataset` reads that layout and the other LeRobot layouts found on the Hub (`lerobot/libero`,
`HuggingFaceVLA/libero`, `lerobot/libero_plus` once downloaded): `v2.x` (one parquet per episode, optional per-episode
MP4 videos) and `v3.0` (several episodes per parquet / MP4 file, episode metadata in `meta/episodes/`), and the
column aliases of the original LIBERO conversions (`image`, `wrist_image`, `state`, `actions`).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000
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
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class LeRobotDatasetWriter:
    """Append episodes to a LeRobot-format dataset folder; `finalize()` writes the metadata.

    Every episode is durable once `add_episode` returns: its parquet file is in place and its line appended to
    `meta/episodes.jsonl`. `meta/info.json`, written last by `finalize()`, marks a complete dataset; a folder
    without it is an interrupted one, which `resume=True` continues (parquet files without an episode line are
    discarded, the statistics recomputed from the recorded episodes).

    Args:
        root: dataset folder (created; must be empty or absent unless `resume=True`).
        image_keys: camera keys (`observation.images.<key>`).
        image_size: `(height, width)` of the frames.
        robot_type, fps: recorded in info.json.
        resume: continue (or append to) the dataset already in `root`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_keys: tuple[str, ...] = ("image", "wrist_image"),
        image_size: tuple[int, int] = (128, 128),
        fps: int = FPS,
        robot_type: str = "panda",
        resume: bool = False,
    ) -> None:
        from .records import RecordLog

        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()) and not resume:
            raise FileExistsError(
                f"Dataset folder {self.root} is not empty: pass resume=True to continue writing to it, or use a "
                f"new folder"
            )
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        self.image_keys = tuple(image_keys)
        self.image_size = tuple(image_size)
        self.fps = fps
        self.robot_type = robot_type
        self.tasks: dict[str, int] = {}
        self.total_frames = 0
        self._stats: dict[str, list[np.ndarray]] = {"observation.state": [], "action": []}
        self._log = RecordLog(self.root / "meta" / "episodes.jsonl")
        self.episodes: list[dict[str, Any]] = self._log.open()
        self._complete_on_disk = (self.root / "meta" / "info.json").is_file()
        if self.episodes:
            self._load_existing()
        self._discard_unrecorded()

    def _load_existing(self) -> None:
        import pyarrow.parquet as pq

        from .records import read_records

        meta = self.root / "meta"
        for row in read_records(meta / "tasks.jsonl"):
            self.tasks[row["task"]] = row["task_index"]
        for episode in self.episodes:
            path = self._episode_path(episode["episode_index"])
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: {meta / 'episodes.jsonl'} records episode {episode['episode_index']}"
                )
            table = pq.read_table(path, columns=["observation.state", "action"])
            for key in self._stats:
                self._stats[key].append(np.asarray(table.column(key).to_pylist(), dtype=np.float32))
            self.total_frames += episode["length"]

    def _episode_path(self, episode_index: int) -> Path:
        return self.root / DATA_PATH.format(episode_chunk=episode_index // CHUNKS_SIZE, episode_index=episode_index)

    def _discard_unrecorded(self) -> None:
        """Remove what a killed run left beyond its last recorded episode (a parquet file, a temporary file)."""
        data = self.root / "data"
        if not data.is_dir():
            return
        for path in data.glob("chunk-*/episode_*.parquet*"):
            index = path.name[len("episode_") :].split(".")[0]
            if path.name.endswith(".tmp") or (index.isdigit() and int(index) >= len(self.episodes)):
                path.unlink()

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
                "task": Value("string"),
            }
        )
        return Features(features)

    def add_episode(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        images: dict[str, list[bytes | np.ndarray]],
        task: str,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Write one episode: `states [T, 8]`, `actions [T, 7]`, `images[key]` T frames (PNG bytes or arrays)."""
        import pyarrow.parquet as pq
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
        new_task = task not in self.tasks
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
                "task": [task] * length,
            }
        )
        if self._log.closed:  # adding after finalize()
            self._log.open()
        if self._complete_on_disk:
            # The dataset changes: it is complete again only when finalize() rewrites info.json.
            (self.root / "meta" / "info.json").unlink(missing_ok=True)
            self._complete_on_disk = False
        path = self._episode_path(episode_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The arrow table carries the HF features in its schema metadata, so `datasets` decodes images on load.
        table = Dataset.from_dict(columns, features=self._features()).data.table
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        if new_task:
            self._write_tasks()
        # The episode line comes last: an episode is recorded only once its frames and its task are on disk.
        episode = {"episode_index": episode_index, "tasks": [task], "length": length, **(extra or {})}
        self._log.append(episode)
        self.episodes.append(episode)
        self.total_frames += length
        self._stats["observation.state"].append(states)
        self._stats["action"].append(actions)
        return episode_index

    def _write_tasks(self) -> None:
        write_text(
            self.root / "meta" / "tasks.jsonl",
            "".join(
                json.dumps({"task_index": i, "task": t}) + "\n"
                for t, i in sorted(self.tasks.items(), key=lambda x: x[1])
            ),
        )

    def finalize(self) -> Path:
        """Write meta/tasks.jsonl, stats.json and, last, info.json; returns the dataset root."""
        meta = self.root / "meta"
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
        features.update(
            {
                "action": {"dtype": "float32", "shape": [7], "names": ACTION_NAMES},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                "frame_index": {"dtype": "int64", "shape": [1], "names": None},
                "episode_index": {"dtype": "int64", "shape": [1], "names": None},
                "index": {"dtype": "int64", "shape": [1], "names": None},
                "task_index": {"dtype": "int64", "shape": [1], "names": None},
                "task": {"dtype": "string", "shape": [1], "names": None},
            }
        )
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "total_videos": 0,
            "total_chunks": max(1, -(-len(self.episodes) // CHUNKS_SIZE)),
            "chunks_size": CHUNKS_SIZE,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": features,
        }
        self._write_tasks()
        stats = {}
        for key, chunks in self._stats.items():
            if chunks:
                values = np.concatenate(chunks)
                stats[key] = {
                    "mean": values.mean(0).tolist(),
                    "std": values.std(0).tolist(),
                    "min": values.min(0).tolist(),
                    "max": values.max(0).tolist(),
                    "count": [len(values)],
                }
        write_text(meta / "stats.json", json.dumps(stats, indent=2))
        # Last: info.json marks the dataset complete (episodes.jsonl is already complete, appended episode by episode).
        write_text(meta / "info.json", json.dumps(info, indent=2))
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
        self.hf_dataset = self._load_frames()
        self.video_keys = [k for k, v in self.features.items() if v.get("dtype") == "video"]
        self._video_cache: dict[str, np.ndarray] = {}

    def _load_tasks(self) -> dict[int, str]:
        meta = self.root / "meta"
        if (meta / "tasks.jsonl").is_file():
            rows = [json.loads(line) for line in (meta / "tasks.jsonl").read_text().splitlines() if line.strip()]
            return {int(r["task_index"]): r["task"] for r in rows}
        if (meta / "tasks.parquet").is_file():  # v3.0: task strings are the index of the table
            import pyarrow.parquet as pq

            table = pq.read_table(meta / "tasks.parquet").to_pandas()
            if "task" in table.columns:
                return {int(i): t for t, i in zip(table["task"], table["task_index"])}
            return {int(i): str(t) for t, i in zip(table.index, table["task_index"])}
        return {}

    def _load_episodes(self) -> list[dict[str, Any]]:
        meta = self.root / "meta"
        if (meta / "episodes.jsonl").is_file():
            return [json.loads(line) for line in (meta / "episodes.jsonl").read_text().splitlines() if line.strip()]
        files = sorted((meta / "episodes").glob("*/*.parquet"))
        if files:
            import pyarrow.parquet as pq

            rows: list[dict[str, Any]] = []
            for file in files:
                rows.extend(pq.read_table(file).to_pylist())
            return sorted(rows, key=lambda r: r["episode_index"])
        return []

    def _load_frames(self):
        from datasets import Image, load_dataset

        files = sorted(str(p) for p in (self.root / "data").glob("*/*.parquet"))
        if not files:
            raise FileNotFoundError(f"No parquet files under {self.root / 'data'}")
        dataset = load_dataset("parquet", data_files=files, split="train")
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
                item[key] = np.asarray(value.convert("RGB")) if hasattr(value, "convert") else np.asarray(value)
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
        if self.version.startswith("v3"):
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
