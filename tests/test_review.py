"""Reviewing registrations: decisions, the state derived from them, and every export."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kadr.traps.decisions import DB_NAME, DecisionLog, NewDecision
from kadr.traps.exports import export_run, validate_camtrap_dp
from kadr.traps.review import NotARunError, load_state
from kadr.traps.review_app import Conflict, Review
from tests.helpers import jpeg_bytes, shared_path

T0 = datetime(2024, 7, 1, 6, 0, 0)


def photo_row(root: Path, cam: str, i: int, minute: float, cls: str, count: int, prob: float,
              source: str = "exif") -> dict:
    key = f"{cam}/IMG_{i:04d}.JPG"
    path = root / "photos" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(seed=i + 100 * len(cam), size=(160, 120)))
    animal = cls != "empty"
    dets = [{"label": cls, "category": "animal", "conf": prob, "bbox": [0.2, 0.2, 0.3, 0.3]}] \
        if animal else [{"label": "deer", "category": "animal", "conf": 0.12,
                         "bbox": [0.5, 0.5, 0.1, 0.1]}]
    return {"key": key, "path": str(path), "group": cam, "photo_id": f"{cam}-{i:04d}",
            "time": T0 + timedelta(minutes=minute), "time_source": source, "width": 160,
            "height": 120, "format": "JPEG", "mode": "RGB", "status": "ok", "reason": None,
            "detections": json.dumps(dets), "n_animals": count, "class": cls,
            "class_prob": prob if animal else None, "count": count,
            "top_bbox": None}


def make_run(root: Path, rows: list[dict] | None = None, method: str = "sessions") -> Path:
    """A `traps run` output folder (photos.parquet, summary.json) without running a model:
    camA has a fox visit (3 photos), a badger visit (2) and an empty stretch; camB one deer."""
    if rows is None:
        rows = [photo_row(root, "camA", 0, 0, "fox", 1, 0.9),
                photo_row(root, "camA", 1, 1, "fox", 2, 0.8),
                photo_row(root, "camA", 2, 2, "fox", 1, 0.7),
                photo_row(root, "camA", 3, 120, "badger", 1, 0.4),
                photo_row(root, "camA", 4, 121, "badger", 1, 0.5),
                photo_row(root, "camA", 5, 300, "empty", 0, 0.0),
                photo_row(root, "camA", 6, 301, "empty", 0, 0.0),
                photo_row(root, "camB", 0, 10, "deer", 1, 0.6, source="mtime")]
    out = root / "out"
    out.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "photos.parquet")
    settings = {"detector": "yolox:none.onnx", "classifier": None, "method": method,
                "gap": "30m", "threshold": 0.3}
    (out / "summary.json").write_text(json.dumps({"settings": settings}))
    return out


def unit_with(review: Review, cls: str, camera: str = "camA"):
    return next(u for u in review.state.units.values() if u.cls == cls and u.camera == camera)


def ref(u) -> dict:
    return {"id": u.id, "etag": u.etag}


def test_machine_units_cover_every_photo_once(tmp_path):
    state = load_state(make_run(tmp_path))
    kinds = sorted((u.camera, u.cls, len(u.rows)) for u in state.units.values())
    assert kinds == [("camA", "badger", 2), ("camA", "empty", 2), ("camA", "fox", 3),
                     ("camB", "deer", 1)]
    covered = sorted(r for u in state.units.values() for r in u.rows.tolist())
    assert covered == list(range(8)), "each photo in exactly one unit"
    deer = next(u for u in state.units.values() if u.cls == "deer")
    assert any("not from EXIF" in f for f in deer.flags), "a file-dated photo is marked"
    blank = next(u for u in state.units.values() if u.cls == "empty")
    assert blank.prob == pytest.approx(0.88), "empty is as certain as the best animal box allows"


def test_every_action_is_logged_applied_and_exported(tmp_path):
    out = make_run(tmp_path)
    review = Review(out, reviewer="ana")
    fox, badger = unit_with(review, "fox"), unit_with(review, "badger")
    # Relabel the badgers as a new class a reviewer types, then set their count.
    r = review.decide({"action": "label", "units": [ref(badger)], "cls": "pine marten"})
    marten = review.state.units[r["units"][0]["id"]]
    assert marten.reviewed and marten.cls == "pine marten" and marten.count == 1
    review.decide({"action": "count", "units": [ref(marten)], "count": 2})
    # Split the fox visit at its second photo, accept the first part, merge back, undo merge.
    fox_ids = [p for p in review._photo_ids(fox)]
    r = review.decide({"action": "split", "units": [ref(fox)], "at": fox_ids[1]})
    first, second = (review.state.units[u["id"]] for u in r["units"])
    assert [len(first.rows), len(second.rows)] == [1, 2] and not first.reviewed
    assert second.cls == "fox" and second.count == 2, "a split part takes the machine's vote"
    r = review.decide({"action": "merge", "units": [ref(first), ref(second)]})
    merged = review.state.units[r["units"][0]["id"]]
    assert len(merged.rows) == 3
    undone = review.undo()
    assert undone["kind"] == "merge"
    assert sorted(len(u.rows) for u in review.state.units.values() if u.cls == "fox") == [1, 2]
    # The blank stretch holds an animal the detector missed: label it; accept the deer.
    blank = unit_with(review, "empty")
    review.decide({"action": "label", "units": [ref(blank)], "cls": "fox"})
    deer = unit_with(review, "deer", "camB")
    review.decide({"action": "accept", "units": [ref(deer)]})
    # The log holds every decision, in order, with who made it.
    with DecisionLog(out) as log:
        kinds = [d.kind for d in log.all()]
        assert kinds == ["label", "label", "split", "merge", "undo", "label", "label"]
        assert {d.reviewer for d in log.all()} == {"ana"}
    # A fresh derivation from the log gives the same state as the live one.
    fresh = load_state(out)
    live = sorted((u.camera, u.cls, u.count, tuple(u.rows.tolist()), u.reviewed)
                  for u in review.state.units.values())
    assert live == sorted((u.camera, u.cls, u.count, tuple(u.rows.tolist()), u.reviewed)
                          for u in fresh.units.values())
    # Exports carry the decisions.
    regs, _ = export_run(out)
    csv = pd.read_csv(out / "registrations.csv")
    assert sorted(zip(csv["class"], csv["count"], strict=True)) == [
        ("deer", 1), ("fox", 1), ("fox", 1), ("fox", 2), ("pine marten", 2)]
    obs = pd.read_csv(out / "camtrap-dp" / "observations.csv")
    events = obs[obs["observationLevel"] == "event"]
    human = events[events["classificationMethod"] == "human"]
    assert sorted(human["scientificName"]) == ["deer", "fox", "pine marten"]
    assert set(human["classifiedBy"]) == {"ana"}
    assert human["classificationTimestamp"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$").all()
    assert (obs["observationLevel"] == "media").sum() > 0, "the machine's media observations stay"
    schemas = shared_path("data", "camtrap-dp-1.0.2")
    assert validate_camtrap_dp(out / "camtrap-dp", schemas) == []
    md = json.loads((out / "megadetector.json").read_text())
    names = {v: k for k, v in md["classification_categories"].items()}
    badger_photo = next(i for i in md["images"] if i["file"].endswith("camA/IMG_0003.JPG"))
    assert badger_photo["detections"][0]["classifications"] == [[names["pine marten"], 1.0]]
    agreement = pd.read_csv(out / "review-agreement.csv").set_index("class")
    assert agreement.at["badger", "machine_predicted"] == 1
    assert agreement.at["pine marten", "recall"] == 0.0
    assert agreement.at["deer", "precision"] == 1.0
    assert "Machine versus reviewers" in (out / "report.html").read_text()


def test_second_tab_or_reviewer_gets_a_conflict_not_an_overwrite(tmp_path):
    out = make_run(tmp_path)
    ana, ben = Review(out, "ana"), Review(out, "ben")  # two servers on one folder
    badger_seen_by_ben = ref(unit_with(ben, "badger"))
    ana.decide({"action": "label", "units": [ref(unit_with(ana, "badger"))], "cls": "marten"})
    with pytest.raises(Conflict) as c:
        ben.decide({"action": "accept", "units": [badger_seen_by_ben]})
    assert c.value.units[0]["now"] is None, "the unit ben saw is gone (regrouped by ana)"
    current = unit_with(ben, "marten")
    assert current.decision.reviewer == "ana", "ben now sees ana's decision"
    # Ben's pages show what ana decides without ben acting first.
    ana.decide({"action": "accept", "units": [ref(unit_with(ana, "deer", "camB"))]})
    shown = ben.queue({"reviewed": "yes"})["units"]
    assert {u["cls"] for u in shown} == {"marten", "deer"}
    ben.decide({"action": "label", "units": [ref(current)], "cls": "badger"})  # resolved
    # Same server, two tabs: a stale etag is refused too.
    fox = unit_with(ana, "fox")
    stale = ref(fox)
    ana.decide({"action": "count", "units": [stale], "count": 3})
    with pytest.raises(Conflict):
        ana.decide({"action": "count", "units": [stale], "count": 4})


def test_a_rerun_keeps_decisions_and_flags_changed_photos(tmp_path):
    out = make_run(tmp_path)
    review = Review(out, "ana")
    review.decide({"action": "label", "units": [ref(unit_with(review, "fox"))], "cls": "wolf"})
    review.decide({"action": "accept", "units": [ref(unit_with(review, "badger"))]})
    # The rerun: one wolf photo is gone (replaced or deleted), a new photo arrives, and
    # another model calls the badgers "marten".
    table = pd.read_parquet(out / "photos.parquet")
    table = table[table["photo_id"] != "camA-0001"]
    table.loc[table["class"] == "badger", "class"] = "marten"
    new = pd.DataFrame([photo_row(tmp_path, "camB", 9, 500, "deer", 1, 0.9)])
    pd.concat([table, new]).to_parquet(out / "photos.parquet")
    state = load_state(out)
    wolf = next(u for u in state.units.values() if u.cls == "wolf")
    assert len(wolf.rows) == 2 and not wolf.reviewed
    assert any("no longer in the run" in f for f in wolf.flags), "flagged for another look"
    badger = next(u for u in state.units.values() if u.cls == "badger")
    assert badger.reviewed and badger.machine_cls == "marten", "human class kept, new machine"
    assert sum(u.cls == "deer" for u in state.units.values()) == 2


def test_clock_shift_moves_registrations_and_exports(tmp_path):
    out = make_run(tmp_path)
    review = Review(out, "ana")
    badger = unit_with(review, "badger")
    first_badger = review._photo_ids(badger)[0]
    review.clock({"camera": "camA", "photo": first_badger, "true_time": "2024-07-01 09:00:00",
                  "from_photo_on": True})
    badger = unit_with(review, "badger")
    assert str(badger.start) == "2024-07-01 09:00:00"
    assert str(unit_with(review, "fox").start) == "2024-07-01 06:00:00", "earlier photos stay"
    export_run(out)
    photos = pd.read_parquet(out / "photos.parquet").set_index("photo_id")
    assert str(photos.at[first_badger, "time"]) == "2024-07-01 09:00:00"
    assert str(photos.at[first_badger, "time_camera"]) == "2024-07-01 08:00:00"
    # A second export starts from the camera's own times again (no double shift).
    export_run(out)
    photos = pd.read_parquet(out / "photos.parquet").set_index("photo_id")
    assert str(photos.at[first_badger, "time"]) == "2024-07-01 09:00:00"
    assert "dated by file name or modification time" in json.loads(
        (out / "summary.json").read_text())["warnings"][-1]


def test_bad_inputs_get_clear_messages_and_nothing_is_deleted(tmp_path):
    with pytest.raises(NotARunError, match="not an output folder"):
        Review(tmp_path)
    out = make_run(tmp_path)
    old = pd.read_parquet(out / "photos.parquet").drop(columns=["photo_id"])
    old.to_parquet(tmp_path / "old.parquet")
    (out / "photos.parquet").rename(out / "photos.keep")
    (tmp_path / "old.parquet").rename(out / "photos.parquet")
    with pytest.raises(NotARunError, match="older kadr"):
        Review(out)
    (out / "photos.keep").replace(out / "photos.parquet")
    corrupt = b"this is not a database" * 100
    (out / DB_NAME).write_bytes(corrupt)
    review = Review(out, "ana")
    assert review.problems and "cannot be read" in review.problems[0]
    assert review.queue({})["total"] == 4, "the app still serves the machine's registrations"
    with pytest.raises(PermissionError):
        review.decide({"action": "accept", "units": [ref(unit_with(review, "fox"))]})
    assert (out / DB_NAME).read_bytes() == corrupt, "the database is left as it was"
    (out / DB_NAME).unlink()
    # A photo that has disappeared: no image, the rest still served.
    review = Review(out, "ana")
    fox = unit_with(review, "fox")
    ids = review._photo_ids(fox)
    Path(review.state.table.set_index("photo_id").at[ids[0], "path"]).unlink()
    assert review.photo(ids[0], "display") is None
    assert review.photo(ids[1], "display")[:2] == b"\xff\xd8"
    assert review.photo("../../etc/passwd", "display") is None
    assert review.photo(ids[1], "../../x") is None


def test_decisions_are_durable_and_append_only(tmp_path):
    out = make_run(tmp_path)
    with DecisionLog(out) as log:
        log.append("ana", [NewDecision("empty", ("camA-0005",), {})])
        assert log.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(Exception, match="append-only"):
            log.db.execute("DELETE FROM decisions")
        with pytest.raises(ValueError):
            log.append("ana", [NewDecision("guess", (), {})])
        assert len(log.all()) == 1, "a refused batch stores nothing"


def planted_run(root: Path, n: int = 120, seed: int = 0) -> tuple[Path, dict[str, str]]:
    """Registrations whose embeddings separate three species while the zero-shot
    probabilities are right only about half the time; returns the truth per photo id."""
    rng = np.random.default_rng(seed)
    classes = ["badger", "fox", "marten"]
    centres = rng.normal(size=(3, 16))
    rows, truth = [], {}
    for i in range(n):
        k = i % 3
        p = rng.dirichlet(np.ones(3))  # zero-shot: noise, nudged towards the truth
        p[k] += 0.35
        p /= p.sum()
        said = classes[int(p.argmax())]
        row = photo_row(root, "camA", i, 120 * i, said, 1, float(p.max()))
        row.update({f"p_{c}": float(v) for c, v in zip(classes, p, strict=True)})
        row["p_empty"] = 0.0
        v = centres[k] + 0.5 * rng.normal(size=16)
        row["embedding"] = (v / np.linalg.norm(v)).astype(np.float32)
        rows.append(row)
        truth[row["photo_id"]] = classes[k]
    return make_run(root, rows), truth


def test_learning_beats_zero_shot_on_held_out_registrations(tmp_path):
    from kadr.traps.learn import learn_run

    out, truth = planted_run(tmp_path)
    review = Review(out, "ana")
    units = sorted(review.state.units.values(), key=lambda u: u.id)
    reviewed, held_out = units[::2], units[1::2]
    for u in reviewed:
        cls = truth[review._photo_ids(u)[0]]
        if cls == u.cls:
            review.decide({"action": "accept", "units": [ref(u)]})
        else:
            review.decide({"action": "label", "units": [ref(u)], "cls": cls})
    report = learn_run(out)
    assert report["learned_accuracy"] > report["zero_shot_accuracy"] + 0.2
    assert report["mix"] > 0 and report["rescored"] == len(held_out)
    assert {c["class"] for c in report["per_class"]} == {"badger", "fox", "marten"}
    # The held-out registrations (nobody reviewed them) are re-scored.
    state = load_state(out)
    machine = np.mean([u.cls == truth[review._photo_ids(u)[0]] for u in held_out])
    learned = np.mean([state.units[u.id].cls == truth[review._photo_ids(u)[0]]
                       for u in held_out])
    assert learned > machine + 0.2, (learned, machine)
    # The queue re-orders by the new uncertainty: re-scored units carry learned probabilities.
    assert all(state.units[u.id].prob is not None for u in held_out)
    regs, _ = export_run(out)
    assert set(regs["class"]) <= {"badger", "fox", "marten"}
    assert "Learned from the reviews" in (out / "report.html").read_text()


def test_learning_refuses_with_too_few_examples_or_no_embeddings(tmp_path):
    from kadr.traps.learn import LearnError, learn_run

    out, truth = planted_run(tmp_path, n=12)
    review = Review(out, "ana")
    for u in sorted(review.state.units.values(), key=lambda u: u.id)[:4]:
        review.decide({"action": "label", "units": [ref(u)],
                       "cls": truth[review._photo_ids(u)[0]]})
    with pytest.raises(LearnError, match="at least 3"):
        learn_run(out)
    plain = make_run(tmp_path / "plain")
    with pytest.raises(LearnError, match="no classifier embeddings"):
        learn_run(plain)


def test_learning_on_real_crops_of_the_camtrapr_photos(tmp_path):
    """The whole path on real photos: `traps run` keeps the classifier's embeddings (a
    small random CLIP here), a reviewer names every registration from the species folders,
    and learning beats zero-shot in cross-validation on those reviews."""
    from kadr.core.store import read_shards
    from kadr.traps.learn import learn_run
    from kadr.traps.pipeline import TrapSettings, run_traps
    from tests.helpers import TINY_CLIP

    src = shared_path("data", "camera_traps", "camtrapR_pictures", "sample_images_species_dir")
    rows = [{"path": str(p), "camera": p.parents[1].name, "species": p.parent.name}
            for p in sorted(src.rglob("*.JPG"))]
    manifest = tmp_path / "photos.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "out"
    detector = f"yolox:{shared_path('models', 'yolox_nano.onnx')}"
    run_traps(str(manifest), str(out), TrapSettings(detector=detector, classifier=TINY_CLIP,
                                                    group_column="camera", progress=False))
    store = read_shards(out / "photos.store", columns=["embedding"])
    kind = store.schema.field("embedding").type
    assert kind.list_size == 64 and str(kind.value_type) == "float", kind
    assert store.column("embedding").null_count == 0
    species = {r["path"]: r["species"] for r in rows}
    review = Review(out, "ana")
    paths = review.state.table["path"].to_numpy()
    for u in list(review.state.units.values()):
        named = pd.Series([species[p] for p in paths[u.rows]]).mode()[0]
        review.decide({"action": "label", "units": [ref(u)], "cls": named})
    report = learn_run(out, min_per_class=3)
    assert len(report["classes"]) >= 3
    assert report["learned_accuracy"] > report["zero_shot_accuracy"], report["message"]


def test_kadrs_review_order_teaches_learning_more_early_than_least_certain_alone(tmp_path):
    """On the planted set (embeddings carry the class; outliers are where zero-shot is
    least sure), 20 reviews in kadr's order (least certain and most typical first) leave
    more registrations right after `traps learn` than 20 least-certain ones."""
    from kadr.traps.planted import accuracy_after

    def mean(order):
        return np.mean([accuracy_after(order, 20, tmp_path / f"{order}{seed}", seed=seed)
                        for seed in range(3)])

    useful, uncertain = mean("useful"), mean("uncertain")
    assert useful > uncertain + 0.1, (useful, uncertain)
