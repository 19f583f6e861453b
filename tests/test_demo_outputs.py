"""The exports of the demo's run are byte-for-byte what they were: a stored per-photo store
(the demo's 109 real photos through YOLOX, paths moved under /photos) is exported again
and every output a user's tools read is compared with a stored digest. A refactor of the
exports must leave these digests as they are; a deliberate change of an output updates
them in the same commit, saying why."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

import kadr
from kadr.traps.exports import export_run

FIXTURE = Path(__file__).parent / "data" / "demo_run"

# What the outputs digest to; see canonical() for what is left out (times of the export).
DIGESTS = {
    "registrations.csv":
        "584ee59dfc5ecbf1d17435e88307c879be753f8f8c280854e79091c0dd622f60",
    "photos.csv":
        "2f78b7d7bfd16bcbfcc600a96975fd5e5d9f8cb7c00302a5174c04ff7fbab20d",
    "photos.parquet":
        "78bf5b60a9e7a2e140add28336507fc86f0f58b8f4b82c3a9b3730f7b212ed45",
    "megadetector.json":
        "ae064dee7b25358d7da8475e71d09601e4308c9d2508e031f10e86ce3fb24274",
    "camtrap-dp/datapackage.json":
        "b9e1545b1f19990fb7f37234bab6b2ac60f1873054e3cd79e7fb9b0d65606f5f",
    "camtrap-dp/deployments.csv":
        "1eac09ebca3ff86732b351ec8eef1026c77c1ed9a5c249df9d31c09c3f305e14",
    "camtrap-dp/media.csv":
        "ec0868a17733033fde94aea58320454f6c490044dc124403dd580fee491b871e",
    "camtrap-dp/observations.csv":
        "76b70ae3715d3ea826cdb015d24c7d91b03791d6c51469b4d1dcd2b3eac2fbba",
}


def canonical(out: Path, name: str) -> bytes:
    """An output as a user's tool reads it, without the moment it was written."""
    path = out / name
    if name == "photos.parquet":
        table = pq.read_table(path)
        buf = io.StringIO()
        buf.write(str(table.schema.remove_metadata()) + "\n")
        table.to_pandas().to_csv(buf, index=False)
        return buf.getvalue().encode()
    if name == "megadetector.json":
        data = json.loads(path.read_text())
        data["info"].pop("detection_completion_time", None)
        return json.dumps(data, sort_keys=True).encode()
    if name.endswith("datapackage.json"):
        data = json.loads(path.read_text().replace(str(out), "OUT"))
        data.pop("created", None)
        return json.dumps(data, sort_keys=True).encode()
    if name.endswith("observations.csv"):
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        # classifiedBy names kadr's release: a new release is no change of the output.
        table["classifiedBy"] = table["classifiedBy"].str.replace(
            f"kadr {kadr.__version__} ", "kadr VERSION ", regex=False)
        return table.drop(columns=["classificationTimestamp"]).to_csv(index=False).encode()
    return path.read_bytes()


def exported(tmp_path: Path) -> Path:
    out = tmp_path / "traps"
    shutil.copytree(FIXTURE, out)
    shards = sorted((out / "photos.store").glob("part-*.parquet"))
    pq.write_table(pq.read_table(shards[0]), out / "photos.parquet")
    export_run(out)
    return out


def test_the_demo_exports_are_unchanged(tmp_path):
    out = exported(tmp_path)
    got = {name: hashlib.sha256(canonical(out, name)).hexdigest() for name in DIGESTS}
    assert got == DIGESTS
