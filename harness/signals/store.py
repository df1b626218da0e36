"""Compact, sharded, resumable storage of aligned teacher signals.

One store is one folder `<cache_dir>/signals/<key>/` (key = stable_hash of everything that determines its
content) holding `meta.json` and `shard-NNNNN.parquet`, shard i covering corpus examples
[i * shard_size, (i + 1) * shard_size). Per example a shard row keeps only real tokens:

    id, skill, ce (float32), n_tokens, resp_start, n_aligned,
    input_ids  list<uint16|uint32>   the target's tokens of prompt + response (T = n_tokens)
    topk_ids   list<uint16|uint32>   (T - resp_start) * k target ids, row-major: token resp_start + r, entry e
    topk_logp  list<float16>         matching log-probabilities (-inf where a row has fewer than k entries)

plus optional extra columns (the generated `response`, the judged `winner` and `scores`). Ids use the smallest
unsigned type that holds the target vocabulary. Shards are zstd-compressed with page checksums and written
atomically (tmp + rename), then sealed with a `shard-NNNNN.parquet.sha256` (harness/store.py), so a killed
extraction leaves whole shards only and resumes at the next missing one; a shard that no longer matches its
checksum (or, unsealed, no longer reads back) is reported in one line, moved aside and rebuilt, and so is a store
whose meta.json is damaged. Reading memory-maps the files.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import HarnessError
from harness.modes import Signal
from harness.store import (
    atomic_write_bytes,
    atomic_write_json,
    file_damage,
    locked,
    seal_file,
    set_aside,
    stable_hash,
)

log = logging.getLogger(__name__)

STORE_FORMAT = 1
_SHARD = "shard-{:05d}.parquet"


def id_type(vocab_size: int) -> pa.DataType:
    """The smallest unsigned integer type that holds every id of a vocabulary."""
    for t, limit in ((pa.uint8(), 1 << 8), (pa.uint16(), 1 << 16), (pa.uint32(), 1 << 32)):
        if vocab_size <= limit:
            return t
    return pa.uint64()


@dataclass
class ExampleSignal:
    """One example of a store: the target's tokens and the aligned top-k teacher of each response token."""

    id: str
    skill: str | None
    ce: float
    input_ids: np.ndarray  # [T] target token ids of prompt + response
    resp_start: int  # index of the first response token
    topk_ids: (
        np.ndarray
    )  # [T - resp_start, k] teacher for token resp_start + r (predicted from the position before)
    topk_logp: np.ndarray  # [T - resp_start, k], -inf where absent
    n_aligned: int = 0  # response tokens whose teacher came from an identical-span source token
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def n_response(self) -> int:
        return len(self.input_ids) - self.resp_start


@dataclass(frozen=True)
class StoreMeta:
    """What a store holds; written once, next to the shards, as meta.json."""

    key: str
    kind: str  # "training" | "generation" | "inference"
    n_examples: int
    shard_size: int
    top_k: int
    target_vocab: int
    inputs: dict[str, Any]  # the key's inputs, for people reading the cache
    candidates: tuple[str, ...] = ()  # inference: the order of the `scores` column
    format: int = STORE_FORMAT

    @property
    def n_shards(self) -> int:
        return -(-self.n_examples // self.shard_size)

    def shard_rows(self, index: int) -> int:
        return min(self.shard_size, self.n_examples - index * self.shard_size)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "candidates": list(self.candidates)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreMeta:
        return cls(**{**data, "candidates": tuple(data.get("candidates", ()))})


def _list_array(values: np.ndarray, lengths: Sequence[int], type_: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    if offsets[-1] >= 1 << 31:
        raise ValueError("a shard holds more than 2**31 values in one column; lower signals.shard_size")
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32), pa.int32()), pa.array(values, type=type_)
    )


class SignalStore:
    """A folder of shards plus meta.json; see the module docstring for the layout."""

    def __init__(self, path: Path, meta: StoreMeta) -> None:
        self.path = Path(path)
        self.meta = meta
        self._ids = id_type(meta.target_vocab)

    #  opening
    # -------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, meta: StoreMeta) -> SignalStore:
        """Open `<root>/<meta.key>/`, writing meta.json the first time (under a lock: concurrent ranks)."""
        path = Path(root) / meta.key
        meta_path = path / "meta.json"
        expected = json.loads(json.dumps(meta.to_json(), default=str))
        with locked(path):  # a sibling lock file (<key>.lock), never moved aside with the folder
            if path.exists():
                try:
                    found = json.loads(meta_path.read_text(encoding="utf-8"))
                    why = None if found == expected else "meta.json does not match its key"
                except FileNotFoundError:
                    why = "meta.json is missing"
                except (OSError, ValueError):
                    why = "meta.json is unreadable"
                if why is not None:  # its shards may belong to other inputs: none of them can be trusted
                    set_aside(path, "signal store", why)
            if not meta_path.is_file():
                atomic_write_json(meta_path, meta.to_json())
        return cls(path, meta)

    @classmethod
    def open(cls, path: Path) -> SignalStore:
        meta_path = Path(path) / "meta.json"
        try:
            data = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise HarnessError(
                f"'{path}' is not a signal store (no meta.json); extract signals first", "signals"
            ) from None
        except (OSError, ValueError):
            raise HarnessError(
                f"'{meta_path}' is unreadable; delete '{path}' and extract again", "signals"
            ) from None
        if data.get("format") != STORE_FORMAT:
            raise HarnessError(
                f"signal store '{path}' has format {data.get('format')}, expected {STORE_FORMAT}", "signals"
            )
        return cls(Path(path), StoreMeta.from_json(data))

    #  shards
    # --------------------------------------------------------------------------------------------------
    def shard_path(self, index: int) -> Path:
        return self.path / _SHARD.format(index)

    def read_shard(self, index: int, columns: list[str] | None = None) -> pa.Table:
        """A shard, memory-mapped, page checksums verified."""
        with pa.memory_map(str(self.shard_path(index))) as source:
            return pq.read_table(source, columns=columns, page_checksum_verification=True)

    def shard_ok(self, index: int) -> bool:
        """Whether shard `index` exists and matches its checksum; a damaged one is reported and moved aside.

        A shard without its .sha256 (killed between the two writes, or written before shards were sealed) was
        still renamed into place whole: it is kept, and sealed, if it reads back with the expected rows."""
        path = self.shard_path(index)
        if not path.is_file():
            return False
        if path.with_name(path.name + ".sha256").is_file():
            why = file_damage(path)
        else:
            try:
                table = self.read_shard(index)
                rows = table.num_rows
                why = None if rows == self.meta.shard_rows(index) else f"{rows} rows, expected {self.meta.shard_rows(index)}"
            except (OSError, ValueError, pa.ArrowException) as exc:
                why = f"unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            if why is None:
                seal_file(path)
        if why is not None:
            set_aside(path, "signal shard", why)
            return False
        return True

    def missing_shards(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """The shards of this process (index % world_size == rank) that are absent or unreadable."""
        return [i for i in range(self.meta.n_shards) if i % world_size == rank and not self.shard_ok(i)]

    def complete(self) -> bool:
        return all(self.shard_path(i).is_file() for i in range(self.meta.n_shards))

    def write_shard(
        self, index: int, rows: Sequence[ExampleSignal], extras: dict[str, pa.Array] | None = None
    ) -> Path:
        """Write shard `index` atomically from its examples (in corpus order) and optional extra columns."""
        if len(rows) != self.meta.shard_rows(index):
            raise ValueError(f"shard {index} needs {self.meta.shard_rows(index)} rows, got {len(rows)}")
        k = self.meta.top_k
        for r in rows:
            if r.topk_ids.shape != (r.n_response, k) or r.topk_logp.shape != (r.n_response, k):
                raise ValueError(f"example {r.id}: top-k arrays must be [{r.n_response}, {k}]")
        np_ids = self._ids.to_pandas_dtype()
        empty = np.zeros(0)
        columns: dict[str, pa.Array] = {
            "id": pa.array([r.id for r in rows], pa.string()),
            "skill": pa.array([r.skill for r in rows], pa.string()),
            "ce": pa.array(np.array([r.ce for r in rows], dtype=np.float32)),
            "n_tokens": pa.array(np.array([len(r.input_ids) for r in rows], dtype=np.uint32)),
            "resp_start": pa.array(np.array([r.resp_start for r in rows], dtype=np.uint32)),
            "n_aligned": pa.array(np.array([r.n_aligned for r in rows], dtype=np.uint32)),
            "input_ids": _list_array(
                np.concatenate([r.input_ids for r in rows] or [empty]).astype(np_ids),
                [len(r.input_ids) for r in rows],
                self._ids,
            ),
            "topk_ids": _list_array(
                np.concatenate([r.topk_ids.reshape(-1) for r in rows] or [empty]).astype(np_ids),
                [r.topk_ids.size for r in rows],
                self._ids,
            ),
            "topk_logp": _list_array(
                np.concatenate([r.topk_logp.reshape(-1) for r in rows] or [empty]).astype(np.float16),
                [r.topk_logp.size for r in rows],
                pa.float16(),
            ),
        }
        columns.update(extras or {})
        table = pa.table(columns)
        buf = io.BytesIO()
        try:  # float16 mantissas barely compress; split into byte streams, their exponents do (~8% smaller)
            pq.write_table(
                table,
                buf,
                compression="zstd",
                write_page_checksum=True,
                use_dictionary=[c for c in table.column_names if c != "topk_logp"],
                column_encoding={"topk_logp": "BYTE_STREAM_SPLIT"},
            )
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # a pyarrow without it for float16
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd", write_page_checksum=True)
        path = self.shard_path(index)
        atomic_write_bytes(path, buf.getvalue())
        seal_file(path)
        return path

    #  reading
    # -------------------------------------------------------------------------------------------------
    def iter_shards(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for i in range(self.meta.n_shards):
            if not self.shard_path(i).is_file():
                raise HarnessError(
                    f"signal store '{self.path}' lacks shard {i}; run signal extraction again", "signals"
                )
            yield self.read_shard(i, columns)

    def columns(self) -> list[str]:
        """The names of the shards' columns (read from the first shard's schema; [] for an empty store)."""
        if self.meta.n_shards == 0 or not self.shard_path(0).is_file():
            return []
        return list(pq.read_schema(self.shard_path(0)).names)

    def column(self, name: str) -> list[Any]:
        """One column over all shards, in corpus order."""
        return [v for table in self.iter_shards([name]) for v in table.column(name).to_pylist()]

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob("shard-*.parquet"))

    def n_response_tokens(self) -> int:
        total = 0
        for table in self.iter_shards(["n_tokens", "resp_start"]):
            total += int(
                np.sum(
                    table.column("n_tokens").to_numpy().astype(np.int64)
                    - table.column("resp_start").to_numpy()
                )
            )
        return total


_KNOWN = ("id", "skill", "ce", "n_tokens", "resp_start", "n_aligned", "input_ids", "topk_ids", "topk_logp")


def example_from_table(table: pa.Table, r: int, k: int) -> ExampleSignal:
    """Row r of a shard table as an ExampleSignal (extra columns in `extras`)."""

    def values(name: str, dtype: type) -> np.ndarray:
        return table.column(name)[r].values.to_numpy(zero_copy_only=False).astype(dtype)

    return ExampleSignal(
        id=table.column("id")[r].as_py(),
        skill=table.column("skill")[r].as_py(),
        ce=float(table.column("ce")[r].as_py()),
        input_ids=values("input_ids", np.int64),
        resp_start=int(table.column("resp_start")[r].as_py()),
        topk_ids=values("topk_ids", np.int64).reshape(-1, k),
        topk_logp=values("topk_logp", np.float32).reshape(-1, k),
        n_aligned=int(table.column("n_aligned")[r].as_py()),
        extras={name: table.column(name)[r].as_py() for name in table.column_names if name not in _KNOWN},
    )


@dataclass
class _DecodedShard:
    ids: list[str]
    table: pa.Table
    input_ids: tuple[np.ndarray, np.ndarray]  # (flat values, offsets)
    topk_ids: tuple[np.ndarray, np.ndarray]
    topk_logp: tuple[np.ndarray, np.ndarray]


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    arr = column.combine_chunks()
    return arr.values.to_numpy(zero_copy_only=False), arr.offsets.to_numpy()


class SignalReader:
    """Random access by example id over a complete store, decoding a few memory-mapped shards at a time."""

    def __init__(self, store: SignalStore, cache_shards: int = 32) -> None:
        if not store.complete():
            raise HarnessError(
                f"signal store '{store.path}' is incomplete; run signal extraction again", "signals"
            )
        self.store = store
        self.cache_shards = cache_shards
        self.index: dict[str, tuple[int, int]] = {}
        self.resp_start: dict[str, int] = {}
        self.n_response: dict[str, int] = {}
        for s, table in enumerate(store.iter_shards(["id", "n_tokens", "resp_start"])):
            starts = table.column("resp_start").to_pylist()
            for r, (ex_id, n) in enumerate(
                zip(table.column("id").to_pylist(), table.column("n_tokens").to_pylist(), strict=True)
            ):
                self.index[ex_id] = (s, r)
                self.resp_start[ex_id] = starts[r]
                self.n_response[ex_id] = n - starts[r]
        self._cache: OrderedDict[int, _DecodedShard] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open the memory maps themselves
        return {**self.__dict__, "_cache": OrderedDict()}

    def ids(self) -> list[str]:
        return list(self.index)

    def _shard(self, s: int) -> _DecodedShard:
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        try:
            table = self.store.read_shard(s)
        except (OSError, pa.ArrowException):
            raise HarnessError(
                f"signal shard '{self.store.shard_path(s)}' is unreadable; extract signals again to rebuild",
                "signals",
            ) from None
        decoded = _DecodedShard(
            table.column("id").to_pylist(),
            table,
            _flat(table["input_ids"]),
            _flat(table["topk_ids"]),
            _flat(table["topk_logp"]),
        )
        self._cache[s] = decoded
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return decoded

    def get(self, ex_id: str) -> ExampleSignal:
        s, r = self.index[ex_id]
        shard = self._shard(s)
        k = self.store.meta.top_k

        def part(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
            values, offsets = pair
            return values[offsets[r] : offsets[r + 1]]

        table = shard.table
        extras = {name: table.column(name)[r].as_py() for name in table.column_names if name not in _KNOWN}
        return ExampleSignal(
            id=ex_id,
            skill=table.column("skill")[r].as_py(),
            ce=float(table.column("ce")[r].as_py()),
            input_ids=part(shard.input_ids).astype(np.int64),
            resp_start=int(table.column("resp_start")[r].as_py()),
            topk_ids=part(shard.topk_ids).astype(np.int64).reshape(-1, k),
            topk_logp=part(shard.topk_logp).astype(np.float32).reshape(-1, k),
            n_aligned=int(table.column("n_aligned")[r].as_py()),
            extras=extras,
        )


@dataclass(frozen=True)
class SignalSet:
    """The signals of one mode for one target, as paths to stores.

    `candidates`: one store per candidate, aligned to the target (training mode: teacher-forced on the
    reference; inference mode: on the candidate's own generated response). `selection` (inference mode only):
    the judged winner of each example with its name, every candidate's score, its response and its aligned
    teacher. `path`: where the set itself is recorded in the cache (`<cache>/signals/sets/<key>.json`), once
    saved.
    """

    mode: Signal
    target: str
    candidates: dict[str, Path]
    selection: Path | None = None
    path: Path | None = None

    @property
    def key(self) -> str:
        """Content key: the mode and the keys (folder names) of its stores."""
        return stable_hash(
            [
                self.mode.value,
                self.target,
                {n: p.name for n, p in self.candidates.items()},
                self.selection.name if self.selection else None,
            ]
        )

    def stores(self) -> dict[str, SignalStore]:
        return {name: SignalStore.open(path) for name, path in self.candidates.items()}

    def selection_store(self) -> SignalStore | None:
        return SignalStore.open(self.selection) if self.selection else None

    def complete(self) -> bool:
        stores = list(self.stores().values())
        if self.selection:
            stores.append(SignalStore.open(self.selection))
        return all(s.complete() for s in stores)

    def to_json(self, signals_root: Path | None = None) -> dict[str, Any]:
        """Store paths relative to `signals_root` when given (what `save` writes: a copied or moved cache still
        finds its stores), else as they are."""

        def name(p: Path) -> str:
            if signals_root is not None:
                with contextlib.suppress(ValueError):
                    return Path(p).relative_to(signals_root).as_posix()
            return str(p)

        return {
            "mode": self.mode.value,
            "target": self.target,
            "candidates": {k: name(v) for k, v in self.candidates.items()},
            "selection": name(self.selection) if self.selection else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> SignalSet:
        """Relative store paths resolve against the signals folder holding `sets/` (absolute ones, as older
        caches wrote them, stay as they are)."""
        root = path.parent.parent if path is not None else Path()
        return cls(
            Signal(data["mode"]),
            data["target"],
            {k: root / v for k, v in data["candidates"].items()},
            root / data["selection"] if data.get("selection") else None,
            path,
        )

    def save(self, signals_root: Path) -> SignalSet:
        """Record the set as `<signals_root>/sets/<key>.json`; returns it with `path` set."""
        path = Path(signals_root) / "sets" / f"{self.key}.json"
        atomic_write_json(path, self.to_json(Path(signals_root)))
        return replace(self, path=path)

    @classmethod
    def load(cls, path: Path) -> SignalSet:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            raise HarnessError(
                f"signal set '{path}' is missing or unreadable; extract signals again", "signals"
            ) from None
        return cls.from_json(data, Path(path))
