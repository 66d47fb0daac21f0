"""Parquet schemas (lmms-lab/POPE and lmms-lab/ScienceQA columns) and atomic writing."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

POPE_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("question_id", pa.string()),
    ("question", pa.string()),
    ("answer", pa.string()),
    ("image_source", pa.string()),
    ("image", IMAGE_TYPE),
    ("category", pa.string()),
])

SCIENCEQA_SCHEMA = pa.schema([
    ("image", IMAGE_TYPE),
    ("question", pa.string()),
    ("choices", pa.list_(pa.string())),
    ("answer", pa.int8()),
    ("hint", pa.string()),
    ("task", pa.string()),
    ("grade", pa.string()),
    ("subject", pa.string()),
    ("topic", pa.string()),
    ("category", pa.string()),
    ("skill", pa.string()),
    ("lecture", pa.string()),
    ("solution", pa.string()),
])

OBJECT_TYPE = pa.struct([
    ("category", pa.string()),
    ("row", pa.int8()),
    ("col", pa.int8()),
    ("size", pa.string()),
    ("bbox", pa.list_(pa.int16())),
])

SCENES_SCHEMA = pa.schema([
    ("image_source", pa.string()),
    ("image", IMAGE_TYPE),
    ("scene_type", pa.string()),
    ("objects", pa.list_(OBJECT_TYPE)),
    ("hidden", pa.list_(OBJECT_TYPE)),
    ("occluders", pa.list_(pa.list_(pa.int8()))),
])


def _hf_features(schema: pa.Schema) -> dict[str, Any]:
    """Hugging Face ``datasets`` feature metadata, so ``image`` columns load as images there too."""

    def feat(t: pa.DataType) -> dict[str, Any]:
        if t == IMAGE_TYPE:
            return {"_type": "Image"}
        if pa.types.is_list(t):
            return {"feature": feat(t.value_type), "_type": "Sequence"}
        if pa.types.is_struct(t):
            return {f.name: feat(f.type) for f in t}
        return {"dtype": str(t).replace("int8", "int8"), "_type": "Value"}

    return {f.name: feat(f.type) for f in schema}


def write_parquet_atomic(path: Path, rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> None:
    """Write ``rows`` to ``path`` as parquet via a temporary file and ``os.replace``.

    An interrupted write never leaves a half-written file at ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {b"huggingface": json.dumps({"info": {"features": _hf_features(schema)}},
                                       sort_keys=True).encode()}
    table = pa.Table.from_pylist(list(rows), schema=schema.with_metadata(meta))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=2048)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def content_hash(root: Path, files: Sequence[str]) -> str:
    """SHA-256 over the relative names and bytes of ``files`` under ``root`` (sorted)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0")
        h.update((root / name).read_bytes())
    return h.hexdigest()
