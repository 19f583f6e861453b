"""Review app: server latency at 100k registrations, and keystrokes per reviewed registration.

Part 1 builds a synthetic run folder (100 cameras x 1,000 registrations of two
photos, plus blank stretches), starts ``kadr traps review`` on it as a user
would, and times over HTTP (keep-alive, like the browser):

- an action: accept a registration (stored durably in SQLite before the reply);
- the next registration: its detail (photos, boxes, alternatives, neighbours);
- the queue: the first page, least certain first.

Baseline, measured in the same run and interleaved: one plain durable SQLite
insert (WAL, synchronous=FULL), the floor any action that is on disk before
the reply must pay. Best of each round over rounds, p50 and p95.

Part 2 counts keystrokes per reviewed registration on the demo's real output
(`kadr demo`; needs ../shared): Enter where the machine is right, a number key
where the right species is among the nine shown, else s + the name's first
letters until the type-ahead holds it + Enter; blank stretches of one camera
checked in bulk (shift+A, Enter). The truth is the camtrapR species folders
and, for the other photos, what the detector said.

    python bench/review.py [--registrations 100000] [--actions 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def synthetic_run(folder: Path, registrations: int, cameras: int = 100) -> Path:
    rng = np.random.default_rng(0)
    per_cam = registrations // cameras
    n = per_cam * cameras
    cam = np.repeat([f"cam{c:03d}" for c in range(cameras)], per_cam)
    start = np.tile(np.arange(per_cam) * 7200, cameras)  # a visit every two hours
    classes = np.array(["fox", "badger", "deer", "boar", "hare", "marten"])
    cls = classes[rng.integers(0, len(classes), n)]
    prob = rng.uniform(0.3, 1.0, n).round(4)
    t0 = datetime(2024, 1, 1)
    rows = {"key": [], "group": [], "time": [], "class": [], "class_prob": [], "count": []}
    for shift in (0, 30):  # two photos per registration, 30 s apart
        rows["key"].append(np.char.add(cam, np.char.add("/IMG_", (start + shift).astype(str))))
        rows["group"].append(cam)
        rows["time"].append(pd.to_datetime(t0) + pd.to_timedelta(start + shift, unit="s"))
        rows["class"].append(cls)
        rows["class_prob"].append(prob)
        rows["count"].append(np.ones(n, int))
    blank_t = np.tile(np.arange(per_cam // 10) * 72000 + 3600, cameras)  # blank stretches
    blank_cam = np.repeat([f"cam{c:03d}" for c in range(cameras)], per_cam // 10)
    table = pd.DataFrame({k: np.concatenate(v) for k, v in rows.items()})
    blanks = pd.DataFrame({"key": np.char.add(blank_cam, np.char.add("/B_", blank_t.astype(str))),
                           "group": blank_cam,
                           "time": pd.to_datetime(t0) + pd.to_timedelta(blank_t, unit="s"),
                           "class": "empty", "class_prob": np.nan, "count": 0})
    table = pd.concat([table, blanks], ignore_index=True)
    table["path"] = "/nonexistent/" + table["key"]
    table["photo_id"] = [f"{i:032x}" for i in range(len(table))]
    table["time_source"] = "exif"
    table["status"] = "ok"
    table["n_animals"] = table["count"]
    det = json.dumps([{"label": "animal", "category": "animal", "conf": 0.8,
                       "bbox": [0.1, 0.1, 0.3, 0.3]}])
    table["detections"] = np.where(table["count"] > 0, det, "[]")
    out = folder / "out"
    out.mkdir(parents=True)
    table.to_parquet(out / "photos.parquet")
    (out / "summary.json").write_text(json.dumps({"settings": {
        "detector": "yolox:bench.onnx", "classifier": None, "method": "sessions", "gap": "30m"}}))
    return out


class Client:
    def __init__(self, url: str):
        m = re.match(r"http://([^:/]+):(\d+)(/t/[^/]+/)", url)
        self.conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=120)
        self.conn.connect()
        # As browsers do: no Nagle delay on small requests (else every POST waits ~40 ms
        # for a delayed ACK, and the figure measures TCP, not the server).
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.base = m.group(3)

    def call(self, path: str, body: dict | None = None) -> dict:
        if body is None:
            self.conn.request("GET", self.base + path)
        else:
            self.conn.request("POST", self.base + path, json.dumps(body),
                              {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = json.loads(r.read())
        if r.status != 200:
            raise RuntimeError(f"{path}: {r.status} {data}")
        return data


def pct(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def latency(registrations: int, actions: int, rounds: int = 3) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kadr-bench-review-"))
    t = time.perf_counter()
    out = synthetic_run(tmp, registrations)
    print(f"synthetic run: {registrations} registrations in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("kadr")), "traps", "review", str(out),
         "--no-browser", "--reviewer", "bench"], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"})
    url = next(m.group(1) for line in proc.stdout
               if (m := re.search(r"(http://\S+/t/\S+/)", line)))
    client = Client(url)
    queue = client.call("api/queue")
    print(f"server start and first queue page: {time.perf_counter() - t:.1f} s "
          f"({queue['total']} units in the queue)")
    base_db = sqlite3.connect(tmp / "baseline.sqlite", isolation_level=None)
    base_db.execute("PRAGMA journal_mode=WAL")
    base_db.execute("PRAGMA synchronous=FULL")
    base_db.execute("CREATE TABLE d (id INTEGER PRIMARY KEY, payload TEXT)")
    best: dict[str, list[float]] = {}
    for _ in range(rounds):
        timing = {"accept": [], "next": [], "queue": [], "baseline": []}
        units = client.call("api/queue")["units"]
        for i in range(actions // rounds):
            u = units[i]
            t = time.perf_counter()
            base_db.execute("INSERT INTO d (payload) VALUES (?)", (json.dumps(u),))
            timing["baseline"].append(time.perf_counter() - t)
            t = time.perf_counter()
            client.call(f"api/unit/{units[i + 1]['id']}")
            timing["next"].append(time.perf_counter() - t)
            t = time.perf_counter()
            client.call("api/decide", {"action": "accept", "units": [
                {"id": u["id"], "etag": u["etag"]}]})
            timing["accept"].append(time.perf_counter() - t)
            if i % 10 == 0:
                t = time.perf_counter()
                client.call("api/queue")
                timing["queue"].append(time.perf_counter() - t)
        for k, v in timing.items():
            p50, p95 = pct(v)
            old = best.get(k)
            best[k] = [min(old[0], p50), min(old[1], p95)] if old else [p50, p95]
    proc.terminate()
    proc.wait(30)
    print(f"\n{registrations} registrations, {actions} actions over {rounds} rounds "
          "(best round):")
    print(f"{'request':28s} {'p50 ms':>8s} {'p95 ms':>8s} {'p50 / baseline':>15s}")
    names = {"accept": "accept (durable decision)", "next": "next registration (detail)",
             "queue": "queue page (1,000 units)", "baseline": "baseline: durable insert"}
    for k in ("accept", "next", "queue", "baseline"):
        p50, p95 = best[k]
        print(f"{names[k]:28s} {p50 * 1e3:8.1f} {p95 * 1e3:8.1f} "
              f"{p50 / best['baseline'][0]:15.1f}")


def keystrokes(shared: Path) -> None:
    from kadr.demo import run_demo
    from kadr.traps.review import load_state

    tmp = Path(tempfile.mkdtemp(prefix="kadr-bench-keys-"))
    run_demo(str(shared), str(tmp), progress=False)
    out = tmp / "traps"
    state = load_state(out)
    table = state.table
    folder_truth = table.get("extra_species_folder")
    keys = reviewed = 0
    classes = state.classes()
    bulk_cameras = set()
    for u in sorted(state.units.values(), key=lambda u: -u.uncertainty):
        truth = u.cls
        if folder_truth is not None:
            named = folder_truth.to_numpy()[u.rows]
            named = [n for n in named if isinstance(n, str)]
            if named:
                truth = pd.Series(named).mode()[0]
        reviewed += 1
        if truth == u.cls:
            if u.blank:  # blank stretches of a camera: checked in one bulk accept
                if u.camera not in bulk_cameras:
                    bulk_cameras.add(u.camera)
                    keys += 2
                continue
            keys += 1  # Enter
            continue
        choices = list(dict.fromkeys([a for a, _ in u.alternatives] + classes))[:9]
        if truth in choices:
            keys += 1
        else:  # type-ahead: s, letters until unique among known names, Enter
            known = set(classes)
            n = next((k for k in range(1, len(truth) + 1)
                      if sum(c.startswith(truth[:k]) for c in known) <= 1), len(truth))
            keys += 2 + n
            classes.append(truth)
    print(f"\nkeystrokes on the demo's output: {keys} for {reviewed} registrations and blank "
          f"stretches = {keys / reviewed:.2f} per reviewed registration")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registrations", type=int, default=100_000)
    ap.add_argument("--actions", type=int, default=300)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    a = ap.parse_args()
    latency(a.registrations, a.actions)
    if (Path(a.shared) / "models" / "yolox_nano.onnx").exists():
        keystrokes(Path(a.shared))
    else:
        print(f"\nkeystrokes: skipped, needs {a.shared}/models/yolox_nano.onnx")


if __name__ == "__main__":
    main()
