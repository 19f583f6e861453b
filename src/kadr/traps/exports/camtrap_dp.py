"""Camtrap DP 1.0.2 packages (deployments, media, observations), written a camera at a time;
:mod:`kadr.traps.exports.validate` checks them."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from kadr.core.status import PhotoStatus
from kadr.core.store import atomic_open, atomic_write_csv, atomic_write_text, key_digests
from kadr.traps.exports.clips import clip_summaries
from kadr.traps.linking import short_id
from kadr.traps.tables import BACKGROUND_CLASSES, DATED_TIME_SOURCES
from kadr.traps.taxa import observation_type, scientific_name

CAMTRAP_VERSION = "1.0.2"
CAMTRAP_BASE = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{CAMTRAP_VERSION}"


MEDIATYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
              "TIFF": "image/tiff", "BMP": "image/bmp", "GIF": "image/gif", "HEIF": "image/heic"}


def _iso(t, offset: str = "Z") -> str | None:
    """ISO 8601 with a UTC offset, as Camtrap DP requires.

    Camera clocks are local and rarely record their offset; times are written
    as the camera's wall clock with ``offset`` (the user's ``--utc-offset``).
    """
    if t is None or pd.isna(t):
        return None
    t = pd.Timestamp(t)
    if t.tzinfo is not None:
        return t.isoformat()
    return t.strftime("%Y-%m-%dT%H:%M:%S") + offset


def _iso_column(times: pd.Series, offset: str = "Z") -> np.ndarray:
    """:func:`_iso` of every time in a column (None where there is none), formatted by
    NumPy for naive times."""
    t = pd.to_datetime(times)
    if getattr(t.dt, "tz", None) is not None:
        return np.array([_iso(v, offset) for v in t], dtype=object)
    seconds = t.to_numpy(dtype="datetime64[ns]").astype("datetime64[s]")
    text = np.char.add(np.datetime_as_string(seconds, unit="s"), offset).astype(object)
    text[np.isnat(seconds)] = None
    return text


MEDIA_FOLDER = "media"  # photos inside the package, where Camtrap DP's filePath may point


def media_file_path(path: str, key: str, media_url: str | None) -> str:
    """``media.filePath``: a URL, or a path inside the package (Camtrap DP allows no
    absolute path and no ``..``). With ``media_url`` (where the photos will be published)
    it is that URL plus the photo's key; else ``media/KEY``."""
    key = key.replace(os.sep, "/")
    if media_url:
        from urllib.parse import quote

        return media_url.rstrip("/") + "/" + quote(key)
    if "://" in path:
        return path
    return f"{MEDIA_FOLDER}/{key}"


def photo_roots(photos: pd.DataFrame) -> set[str | None]:
    """The folders local photos sit under: each path without its key (None where a path
    does not end in its key)."""
    local = photos[~photos["path"].str.contains("://", regex=False)]
    return {p[: -len(k)] if p.replace(os.sep, "/").endswith(k.replace(os.sep, "/")) else None
            for p, k in zip(local["path"], local["key"], strict=True)}


def link_media_folder(package: Path, roots: set[str | None]) -> str | None:
    """Make ``media/KEY`` resolve inside the package: a symlink to the photos' root folder
    (``roots``: :func:`photo_roots` of every photo; empty when none is local).

    Returns a warning when the photos share no root (a manifest of scattered
    files) or the link cannot be made; the user then copies them there."""
    if not roots:
        return None
    link = package / MEDIA_FOLDER
    if len(roots) == 1 and None not in roots:
        target = Path(next(iter(roots)) or ".").resolve()
        try:
            if link.is_symlink() and link.resolve() == target:
                return None
            if link.is_symlink():
                link.unlink()
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
                return None
        except OSError:
            pass
    return (f"Camtrap DP: media files are referenced as {MEDIA_FOLDER}/KEY; copy the photos "
            f"into {link} before publishing, or rerun with --media-url")


UNKNOWN_OFFSET = ("camera clock offset unknown: times are the camera's local clock written as "
                  "UTC; give --utc-offset")


def _deployments(cameras: dict[str, list], deployments_csv: str | None, offset: str | None
                 ) -> tuple[pd.DataFrame, list]:
    """Deployment rows from each camera's ``[first time, last time, any time not from
    EXIF]`` and the user's deployments CSV; also the cameras without coordinates."""
    notes = []
    known = pd.DataFrame()
    if deployments_csv:
        known = pd.read_csv(deployments_csv, dtype={"deploymentID": str, "camera": str})
        if "deploymentID" not in known and "camera" in known:
            known = known.rename(columns={"camera": "deploymentID"})
        known = known.set_index("deploymentID")
    rows = []
    for cam in sorted(cameras):
        first, last, guessed = cameras[cam]
        row = {
            "deploymentID": cam, "locationID": cam, "locationName": cam,
            "latitude": None, "longitude": None,
            "deploymentStart": _iso(first, offset or "Z"),
            "deploymentEnd": _iso(last, offset or "Z"),
            "timestampIssues": bool(offset is None or guessed),
            "deploymentComments": UNKNOWN_OFFSET if offset is None else None,
        }
        if cam in known.index:
            for k, v in known.loc[cam].items():
                if k in row or k in ("coordinateUncertainty", "cameraModel", "habitat"):
                    row[k] = v
        if row["latitude"] is None or pd.isna(row["latitude"]):
            row["latitude"], row["longitude"] = 0.0, 0.0
            row["deploymentComments"] = "; ".join(filter(None, [
                row["deploymentComments"],
                "coordinates unknown: 0,0 is a placeholder; give --deployments with "
                "latitude/longitude"]))
            notes.append(cam)
        rows.append(row)
    return pd.DataFrame(rows), notes


def _timed_ok(photos: pd.DataFrame) -> np.ndarray:
    """Which photos Camtrap DP describes: read, and with a time."""
    return ((photos["status"] == PhotoStatus.OK) & photos["time"].notna()).to_numpy()


class CamtrapPackage:
    """A Camtrap DP 1.0 package (datapackage.json, deployments, media, observations),
    written a chunk of photos and a block of registrations at a time::

        with CamtrapPackage(folder) as package:
            package.write(photos)        # a chunk of photos, with their event_id
            package.write_events(regs)   # registrations whose photos have all been written
        package.warnings

    A chunk holds photos' ``key``, ``group``, ``photo_id``, ``time``,
    ``time_source``, ``status``, ``path``, ``format``, ``class``, ``class_prob``,
    ``detections`` and ``event_id``. Media and media-level observations (from
    detections, with boxes) are written as the chunks come; deployments, the
    package id, its time span and each event's mean class probability are tallied
    from them, so nothing holds every photo. Event-level observations come from
    registrations. ``utc_offset`` is the cameras' clock offset (e.g. ``+03:00``);
    without it times are written as UTC and every deployment says
    ``timestampIssues``. ``media_url``: where the photos will be published
    (``filePath`` is that URL plus the photo's key; else a path relative to the
    package).
    """

    def __init__(self, folder: str | Path, scientific_names: dict | None = None,
                 deployments_csv: str | None = None, utc_offset: str | None = None,
                 media_url: str | None = None,
                 classified_by: Callable[[str | None], str] = lambda model: "kadr"):
        self.folder = Path(folder)
        # The machine's name in classifiedBy, given the model whose vote won (an
        # ensemble's) or None (the run's classifiers).
        self.classified_by = classified_by
        self.names = scientific_names or {}
        self.deployments_csv = deployments_csv
        self.utc_offset = utc_offset
        self.off = utc_offset or "Z"
        self.media_url = media_url
        self.now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.warnings: list[str] = []
        self.roots: set[str | None] = set()
        self.taxa: set[str] = set()
        self.ranks: dict[str, str] = {}  # scientific name: its rank, where a label says it
        self.kinds: dict[str, str] = {}  # class: observationType, from a SpeciesNet label
        self._cameras: dict[str, list] = {}  # camera: [first time, last time, guessed time]
        self._probability: dict[str, list[float]] = {}  # event: [sum of class_prob, photos]
        # The package id: a sum of the photos' digests (the same whatever their order).
        self._id = [0, 0, 0]

    def __enter__(self) -> CamtrapPackage:
        self._files = contextlib.ExitStack()
        self._media = self._files.enter_context(atomic_open(self.folder / "media.csv"))
        self._observations = self._files.enter_context(
            atomic_open(self.folder / "observations.csv"))
        pd.DataFrame(columns=CAMTRAP_COLUMNS["media"]).to_csv(self._media, index=False,
                                                              lineterminator="\n")
        self._write_observations([], header=True)
        return self

    def _write_observations(self, rows: list[dict], header: bool = False) -> None:
        frame = pd.DataFrame(rows).reindex(columns=CAMTRAP_COLUMNS["observations"])
        frame["count"] = frame["count"].astype("Int64")
        frame.to_csv(self._observations, index=False, header=header, lineterminator="\n")
        self.taxa.update(o["scientificName"] for o in rows if o.get("scientificName"))

    def taxon(self, cls: str, label: str | None) -> tuple[str | None, str]:
        """A class's scientific name and observation type. A SpeciesNet label (``taxon``)
        says both (and the rank); else the prompt file's scientific name, or the class."""
        if isinstance(label, str) and label and cls not in self.kinds:
            named = scientific_name(label)
            self.names[cls] = named[0] if named else None
            if named:
                self.ranks[named[0]] = named[1]
            self.kinds[cls] = observation_type(label)
        return self.names.get(cls, cls.replace("_", " ")), self.kinds.get(cls, "animal")

    def machine(self, model) -> str:
        """classifiedBy of a machine classification that ``model`` won (a stored value:
        none, or NaN, where one classifier ran)."""
        return self.classified_by(model if isinstance(model, str) and model else None)

    def _tally(self, ok: pd.DataFrame) -> None:
        """What the package's metadata needs from a chunk's described photos."""
        stats = pd.DataFrame({"time": ok["time"].to_numpy(),
                              "guessed": (~ok["time_source"].isin(DATED_TIME_SOURCES))
                              .to_numpy()}).groupby(
            ok["group"].astype(str).to_numpy()).agg(
            first=("time", "min"), last=("time", "max"), guessed=("guessed", "any"))
        for cam, first, last, guessed in stats.itertuples():
            seen = self._cameras.setdefault(cam, [first, last, guessed])
            seen[:] = [min(seen[0], first), max(seen[1], last), seen[2] or guessed]
        if "event_id" in ok:
            sums = ok.groupby("event_id")["class_prob"].agg(["sum", "count"])
            for event, total, n in zip(sums.index, sums["sum"], sums["count"], strict=True):
                seen = self._probability.setdefault(event, [0.0, 0])
                seen[0] += total
                seen[1] += n
        hi, lo = key_digests((ok["photo_id"] if "photo_id" in ok else ok["key"]).astype(str))
        self._id = [(self._id[0] + int(hi.sum(dtype=np.uint64))) % 2**64,
                    (self._id[1] + int(lo.sum(dtype=np.uint64))) % 2**64, self._id[2] + len(hi)]

    def write(self, chunk: pd.DataFrame) -> None:
        """One chunk of photos (and whole clips' frames): their media rows and media-level
        observations."""
        ok = chunk[_timed_ok(chunk)]
        self._tally(ok)
        if "media_key" in ok and ok["media_key"].notna().any():
            frames = ok["media_key"].notna()
            self._write_clips(ok[frames])
            ok = ok[~frames]
        media_ids = [short_id(k) for k in ok["key"]]
        pd.DataFrame({
            "mediaID": media_ids, "deploymentID": ok["group"].astype(str).to_numpy(),
            "captureMethod": "activityDetection",
            "timestamp": _iso_column(ok["time"], self.off),
            "filePath": [media_file_path(p, k, self.media_url)
                         for p, k in zip(ok["path"], ok["key"], strict=True)],
            "filePublic": bool(self.media_url),
            "fileName": ok["key"].map(os.path.basename).to_numpy(),
            "fileMediatype": ok["format"].map(lambda f: MEDIATYPES.get(str(f), "image/jpeg"))
            .to_numpy(),
        }).reindex(columns=CAMTRAP_COLUMNS["media"]).to_csv(
            self._media, index=False, header=False, lineterminator="\n")
        self._write_observations([
            o for r, media_id in zip(ok.to_dict("records"), media_ids, strict=True)
            for o in _media_observations(r, media_id, self.off, self.now, self.taxon,
                                         self.machine)])
        if not self.media_url and len(self.roots) < 2:  # two roots: no one folder to link
            self.roots |= photo_roots(ok)

    def _write_clips(self, frames: pd.DataFrame) -> None:
        """A media row per clip (its start as the timestamp) and one media-level
        observation spanning its sampled frames: the clip's class and count as
        :func:`~kadr.traps.exports.clips.clip_summaries` gives them, or a blank. Boxes stay
        per frame in the MegaDetector JSON: Camtrap DP's boxes describe a still image."""
        media, observations = [], []
        for clip in clip_summaries(frames).to_dict("records"):
            media_id = short_id(clip["media_key"])
            start, end = _iso(clip["start"], self.off), _iso(clip["end"], self.off)
            media.append({
                "mediaID": media_id, "deploymentID": clip["group"],
                "captureMethod": "activityDetection", "timestamp": start,
                "filePath": media_file_path(clip["path"], clip["media_key"], self.media_url),
                "filePublic": bool(self.media_url),
                "fileName": os.path.basename(clip["media_key"]),
                "fileMediatype": clip["media_type"]})
            base = {"observationID": f"{media_id}_1", "deploymentID": clip["group"],
                    "mediaID": media_id, "eventID": clip["event_id"],
                    "eventStart": start, "eventEnd": end, "observationLevel": "media",
                    "classificationMethod": "machine", "classifiedBy": self.machine(None),
                    "classificationTimestamp": self.now}
            if not clip["count"]:
                observations.append({**base, "observationType": "blank"})
                continue
            cls = clip["class"]
            observations.append({
                **base, "observationType": "animal",
                "scientificName": self.taxon(cls, None)[0],
                "count": clip["count"], "classificationProbability": clip["class_prob"]})
        pd.DataFrame(media).reindex(columns=CAMTRAP_COLUMNS["media"]).to_csv(
            self._media, index=False, header=False, lineterminator="\n")
        self._write_observations(observations)
        if not self.media_url and len(self.roots) < 2:
            self.roots |= photo_roots(frames)

    def write_events(self, regs: pd.DataFrame) -> None:
        """Event-level observations of registrations (those with a time) whose photos have
        all been written, a block at a time."""
        events = regs[regs["date_registration_start"].notna()]
        for a in range(0, len(events), 20_000):
            self._write_observations(self._event_observations(events.iloc[a:a + 20_000]))

    def _event_observations(self, regs: pd.DataFrame) -> list[dict]:
        obs = []
        starts = _iso_column(regs["date_registration_start"], self.off)
        ends = _iso_column(regs["date_registration_end"], self.off)
        for r, start, end in zip(regs.to_dict("records"), starts, ends, strict=True):
            cls = r["class"]
            name, kind = self.taxon(cls, None)
            human = bool(r.get("reviewed"))
            total, n = self._probability.pop(r["eventID"], (0.0, 0))
            p = None if human or not n else total / n
            obs.append({
                "observationID": r["eventID"], "deploymentID": str(r["name_folder"]),
                "mediaID": None, "eventID": r["eventID"],
                "eventStart": start, "eventEnd": end,
                "observationLevel": "event", "observationType": kind,
                "scientificName": name,
                "count": int(r["count"]),
                "classificationMethod": "human" if human else "machine",
                "classifiedBy": (str(r["classified_by"]) if human
                                 else self.machine(r.get("winning_model"))),
                "classificationTimestamp": _utc_seconds(r["classified_at"]) if human else self.now,
                "classificationProbability": None if p is None else round(float(p), 4),
                "observationTags": f"class:{cls}" + (f" | machine:{r['machine_class']}" if human
                                                     else ""),
            })
        return obs

    def _package_id(self) -> str:
        """A UUID that depends only on which photos the package holds (not on where it was
        written, nor on their order), so a rerun on the same photos republishes the same
        package."""
        hi, lo, n = self._id
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kadr:camtrap-dp:{n}:{hi:016x}{lo:016x}"))

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self._files.__exit__(kind, value, traceback)  # nothing half-written is kept
            return
        self._files.close()
        deployments, no_coords = _deployments(self._cameras, self.deployments_csv,
                                              self.utc_offset)
        if no_coords:
            self.warnings.append(f"{len(no_coords)} deployment(s) without coordinates: "
                                 f"{', '.join(no_coords)}")
        if self.utc_offset is None and self._cameras:
            self.warnings.append(
                "Camtrap DP: the cameras' UTC offset is unknown, so timestamps are local clock "
                "times marked as UTC and timestampIssues is true; rerun with --utc-offset "
                "(e.g. +03:00) before publishing")
        atomic_write_csv(self.folder / "deployments.csv",
                         deployments.reindex(columns=CAMTRAP_COLUMNS["deployments"]))
        if not self.media_url:
            self.warnings += filter(None, [link_media_folder(self.folder, self.roots)])
        spans = list(self._cameras.values())
        span = [min(s[0] for s in spans), max(s[1] for s in spans)] if spans else []
        package = {
            "profile": f"{CAMTRAP_BASE}/camtrap-dp-profile.json",
            "name": "kadr-camera-trap-registrations",
            "id": self._package_id(),
            "created": self.now,
            "title": "Camera-trap registrations made by kadr",
            "contributors": [{"title": "kadr", "role": "contributor"}],
            "version": "1.0",
            "project": {
                "title": "Camera-trap registrations", "samplingDesign": "opportunistic",
                "captureMethod": ["activityDetection"], "individualAnimals": False,
                "observationLevel": ["media", "event"],
            },
            "spatial": _bbox_polygon(deployments),
            "temporal": {"start": f"{span[0]:%Y-%m-%d}" if span else "1970-01-01",
                         "end": f"{span[1]:%Y-%m-%d}" if span else "1970-01-01"},
            "taxonomic": [{"scientificName": t, **({"taxonRank": self.ranks[t]}
                                                   if t in self.ranks else {})}
                          for t in sorted(self.taxa)],
            "resources": [
                {"name": n, "path": f"{n}.csv", "profile": "tabular-data-resource",
                 "format": "csv", "mediatype": "text/csv", "encoding": "utf-8",
                 "schema": f"{CAMTRAP_BASE}/{n}-table-schema.json"}
                for n in ("deployments", "media", "observations")
            ],
        }
        if self.warnings:
            package["description"] = "Warnings: " + "; ".join(self.warnings)
        atomic_write_text(self.folder / "datapackage.json", json.dumps(package, indent=2))


def _media_observations(r: dict, media_id: str, off: str, now: str, taxon,
                        classified_by: Callable[[str | None], str] = lambda model: "kadr"
                        ) -> list[dict]:
    """One photo's media-level observations: a blank, one per animal box, or one of the
    photo's kind where its class is no animal (SpeciesNet's human, vehicle, unknown).
    ``taxon(class, label)`` gives a class's scientific name and observation type;
    ``classified_by(model)`` the classifiedBy of what an ensemble's ``model`` named (the
    photo's ``winning_model``, a box's ``model``; None where one classifier ran)."""
    dets = [d for d in json.loads(r["detections"] or "[]") if d["category"] == "animal"]
    cls = r.get("class") or ""
    event_id = r.get("event_id")
    base = {
        "deploymentID": str(r["group"]), "mediaID": media_id,
        "eventID": event_id if isinstance(event_id, str) else None,
        "eventStart": _iso(r["time"], off), "eventEnd": _iso(r["time"], off),
        "observationLevel": "media",
        "classificationMethod": "machine",
        "classifiedBy": classified_by(r.get("winning_model")),
        "classificationTimestamp": now,
    }
    photo_name, photo_kind = taxon(cls, r.get("taxon"))
    photo_prob = r.get("class_prob")
    photo_prob = float(photo_prob) if pd.notna(photo_prob) else None
    if photo_kind in ("human", "vehicle", "unknown") and cls.lower() not in BACKGROUND_CLASSES:
        return [{**base, "observationID": f"{media_id}_0", "observationType": photo_kind,
                 "scientificName": photo_name, "classificationProbability": photo_prob}]
    if cls.lower() in BACKGROUND_CLASSES or not dets:
        return [{**base, "observationID": f"{media_id}_0", "observationType": "blank"}]
    observations = []
    for i, d in enumerate(dets, 1):
        # A box classified on its own is named by its crop (two species in one photo are
        # two observations); a box without a crop, or whose crop looked empty, by the photo.
        own = d.get("class")
        by = base["classifiedBy"]
        if isinstance(own, str) and own.lower() not in BACKGROUND_CLASSES:
            box_cls, prob, label = own, float(d["class_prob"]), d.get("taxon")
            if d.get("model"):
                by = classified_by(d["model"])
        else:
            box_cls, label = cls, r.get("taxon")
            prob = photo_prob if photo_prob is not None else d["conf"]
        name, kind = taxon(box_cls, label)
        x, y, w, h = d["bbox"]
        observations.append({
            **base, "observationID": f"{media_id}_{i}", "observationType": kind,
            "classifiedBy": by,
            "scientificName": name, "count": 1,
            "bboxX": x, "bboxY": y, "bboxWidth": w, "bboxHeight": h,
            "classificationProbability": prob})
    return observations


def _utc_seconds(stamp: str) -> str:
    """A decision's time (UTC, with fractions) as Camtrap DP's %Y-%m-%dT%H:%M:%SZ."""
    return pd.Timestamp(stamp).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bbox_polygon(deployments: pd.DataFrame) -> dict:
    if len(deployments) == 0:  # an empty run: the standard still asks for a polygon
        a = b = (0.0, 0.0)
    else:
        lat = deployments["latitude"].astype(float)
        lon = deployments["longitude"].astype(float)
        a, b = (lon.min(), lat.min()), (lon.max(), lat.max())
    return {"type": "Polygon", "coordinates": [[[a[0], a[1]], [b[0], a[1]], [b[0], b[1]],
                                                 [a[0], b[1]], [a[0], a[1]]]]}


# Column order of the three tables, as the 1.0.2 schemas list them.
CAMTRAP_COLUMNS = {
    "deployments": ["deploymentID", "locationID", "locationName", "latitude", "longitude",
                    "coordinateUncertainty", "deploymentStart", "deploymentEnd", "setupBy",
                    "cameraID", "cameraModel", "cameraDelay", "cameraHeight", "cameraDepth",
                    "cameraTilt", "cameraHeading", "detectionDistance", "timestampIssues",
                    "baitUse", "featureType", "habitat", "deploymentGroups", "deploymentTags",
                    "deploymentComments"],
    "media": ["mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic",
              "fileName", "fileMediatype", "exifData", "favorite", "mediaComments"],
    "observations": ["observationID", "deploymentID", "mediaID", "eventID", "eventStart",
                     "eventEnd", "observationLevel", "observationType", "cameraSetupType",
                     "scientificName", "count", "lifeStage", "sex", "behavior", "individualID",
                     "individualPositionRadius", "individualPositionAngle", "individualSpeed",
                     "bboxX", "bboxY", "bboxWidth", "bboxHeight", "classificationMethod",
                     "classifiedBy", "classificationTimestamp", "classificationProbability",
                     "observationTags", "observationComments"],
}
