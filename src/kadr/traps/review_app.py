"""``kadr traps review``: a local web app to check, correct and learn from registrations.

Starlette on uvicorn. Every route lives under ``/t/TOKEN/`` (a random token
printed with the address), so only whoever was given the address can read
photos or decide. Decisions go to the SQLite log of the run folder
(:mod:`kadr.traps.decisions`) before the browser hears "saved"; the state
the pages show is :class:`kadr.traps.review.ReviewState`, updated per
decision. Photos are served by content id only, and only photos of this
run: a URL cannot name any other file.
"""

from __future__ import annotations

import heapq
import json
import secrets
import signal
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kadr.core.collection import PhotoRoot
from kadr.core.html import render, thumbnail_jpeg
from kadr.core.phototime import typed_time
from kadr.core.store import atomic_write_bytes
from kadr.traps.decisions import Decision, DecisionLog, DecisionLogError, NewDecision
from kadr.traps.exports import export_run
from kadr.traps.learn import learn_run
from kadr.traps.review import (
    ReviewState,
    Unit,
    clock_offset,
    load_learned,
    read_run,
    run_summary,
)
from kadr.traps.settings import saved_prompts
from kadr.traps.similar import UnitVectors
from kadr.traps.tables import EMPTY

PHOTO_SIZES = {"thumb": 200, "display": 1280}
QUEUE_LIMIT = 1000
CACHE_FOLDER = "review-cache"
MAX_COUNT = 9999  # animals in one registration; more is a typo
DONE = {"accept": "accepted", "label": "relabelled", "count": "recounted",
        "empty": "marked empty", "split": "split", "merge": "merged",
        "clock": "shifted the clock of", "undo": "undid a decision on"}


def _duration(seconds: float) -> str:
    """An offset as a person reads it: -14 years 3 days 02:36:20.8."""
    sign, left = ("-" if seconds < 0 else "+"), abs(seconds)
    days, left = divmod(left, 86400)
    years, days = divmod(days, 365)
    h, left = divmod(left, 3600)
    m, sec = divmod(left, 60)
    parts = [f"{int(years)} years"] if years else []
    parts += [f"{int(days)} days"] if days else []
    return sign + " ".join([*parts, f"{int(h):02d}:{int(m):02d}:{sec:04.1f}"])


def _time(t) -> str | None:
    return None if t is None or pd.isna(t) else pd.Timestamp(t).strftime("%Y-%m-%d %H:%M:%S")


class Conflict(Exception):
    """Units changed since the browser saw them (another tab or reviewer)."""

    def __init__(self, units: list[dict]):
        self.units = units


class Review:
    """The server's state: one run folder, its decision log and its reviewed state."""

    def __init__(self, out_dir: str | Path, reviewer: str = "reviewer"):
        self.out = Path(out_dir)
        self.reviewer = reviewer
        self.lock = threading.Lock()  # one decision at a time: check, store, apply
        table, settings = read_run(self.out)
        self.root = PhotoRoot.recorded(run_summary(self.out).get("photo_root"), self.out)
        self.log: DecisionLog | None = None
        self.problems: list[str] = []
        try:
            self.log = DecisionLog(self.out)
            decisions = self.log.all()
        except DecisionLogError as e:  # serve what we can, read-only; the file stays as it is
            self.problems.append(f"{e} Decisions are switched off until it is fixed.")
            decisions = []
        self.state = ReviewState(table, settings, decisions, load_learned(self.out))
        self.project = self._project_classes(settings)
        self.cache = self.out / CACHE_FOLDER
        self.served: dict[str, tuple[str, ...]] = {}
        self._vectors: UnitVectors | None = None  # loaded on first use
        self._useful: tuple[int, dict[str, float]] = (-1, {})

    @staticmethod
    def _project_classes(settings: dict) -> list[str]:
        prompts = saved_prompts(settings)
        return [n for n in prompts.names if n not in prompts.background] if prompts else []

    # ------------------------------------------------------------------ views
    def summary(self, u: Unit) -> dict:
        d = u.decision
        # What the page was shown, so that a stale reference can still be traced to the
        # registration that holds its photos now (a conflict then says what happened).
        self.served[u.id] = self._photo_ids(u)
        return {"id": u.id, "etag": u.etag, "camera": u.camera, "cls": u.cls, "count": u.count,
                "prob": u.prob, "start": _time(u.start), "end": _time(u.end),
                "photos": len(u.rows), "reviewed": u.reviewed, "source": u.source,
                "flags": u.flags, "blank": u.blank, "disputed": u.disputed,
                "reviewer": d.reviewer if d is not None else None}

    def queue(self, q: dict) -> dict:
        with self.lock:  # what another server on this folder decided shows here too
            self._catch_up()
        units = list(self.state.units.values())
        cameras = sorted(cam for cam, ids in self.state.by_camera.items() if ids)
        if q.get("camera"):
            units = [u for u in units if u.camera == q["camera"]]
        if q.get("cls"):
            units = [u for u in units if u.cls == q["cls"]]
        lo, hi = float(q.get("pmin") or 0), float(q.get("pmax") or 1)
        units = [u for u in units if lo <= (u.prob if u.prob is not None else 1.0) <= hi]
        done = sum(u.reviewed for u in units)  # progress within the other filters
        left = len(units) - done
        reviewed = q.get("reviewed", "no")
        if reviewed in ("yes", "no"):
            units = [u for u in units if u.reviewed == (reviewed == "yes")]
        offset = int(q.get("offset") or 0)
        limit = min(int(q.get("limit") or QUEUE_LIMIT), QUEUE_LIMIT)  # 0: the counts only
        sort = q.get("sort") or "useful"
        useful = self.usefulness() if sort == "useful" and limit else None
        # An ensemble's disagreements come first in either ranked order.
        if sort == "time":
            def order(u):
                return u.camera, u.start or pd.Timestamp.min, u.id
        elif useful:  # least certain and most typical first (kadr.traps.similar)
            def order(u):
                return (not u.disputed, -useful.get(u.id, u.uncertainty * 0.5), u.blank,
                        u.camera, u.id)
        else:  # least certain first; blanks after animals at equal certainty
            def order(u):
                return not u.disputed, -u.uncertainty, u.blank, u.camera, u.id
        # Only the page is sorted out of the whole queue (a heap, not a full sort).
        page = heapq.nsmallest(offset + limit, units, key=order)[offset:] if limit else []
        return {"total": len(units), "units": [self.summary(u) for u in page],
                "reviewed": done, "left": left, "cameras": cameras,
                "classes": self.state.classes(self.project), "problems": self.state.problems}

    def vectors(self) -> UnitVectors:
        if self._vectors is None:
            self._vectors = UnitVectors(self.out, self.state)
        return self._vectors

    def usefulness(self) -> dict[str, float]:
        """The default order's scores, worked out again once per new decision."""
        version = len(self.state.decisions)
        if self._useful[0] != version:
            vectors = self.vectors()
            units = list(self.state.units.values())
            self._useful = (version, vectors.usefulness(units) if vectors.available else {})
        return self._useful[1]

    def like(self, uid: str, q: dict) -> dict:
        """More like this: the unreviewed registrations nearest to ``uid`` (in the camera
        filter, if one is set), nearest first."""
        with self.lock:
            self._catch_up()
        u = self.state.units.get(uid)
        if u is None:
            raise KeyError(uid)
        if not self.vectors().available:
            raise ValueError("this run has no classifier embeddings (made with --classifier "
                             "none?): 'more like this' needs them")
        n = max(1, min(int(q.get("n") or 20), 200))
        candidates = [v for v in self.state.units.values() if not v.reviewed
                      and (not q.get("camera") or v.camera == q["camera"])]
        near = self.vectors().nearest(u, candidates, n)
        return {"units": [dict(self.summary(v), similarity=round(s, 4)) for v, s in near]}

    def detail(self, uid: str) -> dict:
        with self.lock:
            self._catch_up()
        u = self.state.units.get(uid)
        if u is None:
            raise KeyError(uid)
        s = self.state
        photos = []
        for r in u.rows:
            dets = json.loads(s.detections[r] or "[]")
            photos.append({
                "id": s.pid[r], "name": s.key[r].rsplit("/", 1)[-1], "key": s.key[r],
                "time": _time(s.t[r]), "time_camera": _time(s.camera_t[r]),
                "time_source": s.time_source[r], "cls": s.cls[r],
                "prob": None if np.isnan(s.cls_prob[r]) else float(s.cls_prob[r]),
                "boxes": [{"bbox": d["bbox"], "conf": d["conf"], "label": d["label"]}
                          for d in dets if d.get("category") == "animal" and d["conf"] >= 0.1],
                **self._clip_of(r),
            })
        same_cam = sorted((self.state.units[v] for v in self.state.by_camera[u.camera]),
                          key=self.state.time_order)
        i = next(k for k, v in enumerate(same_cam) if v.id == u.id)
        neighbours = [dict(self.summary(v), here=v.id == u.id)
                      for v in same_cam[max(0, i - 3): i + 4]]
        previous = same_cam[i - 1] if i > 0 else None
        return dict(self.summary(u), photo_list=photos, alternatives=u.alternatives,
                    neighbours=neighbours, machine_cls=u.machine_cls,
                    previous=self.summary(previous) if previous else None,
                    decided_at=u.decision.at if u.decision else None,
                    why=self._why(u))

    def _is_frame(self, row: int) -> bool:
        """Whether a row of the run is a frame sampled from a video clip."""
        table = self.state.table
        return "media_key" in table and not pd.isna(table["media_key"].iat[row])

    def _path_of(self, row: int) -> str:
        """A row's photo (or clip) file, resolved against the run's photo root."""
        path = str(self.state.table["path"].iat[row])
        return str(self.root.resolve(path)) if self.root else path

    def _clip_of(self, row: int) -> dict:
        """For a clip's sampled frame: the clip to play and the frame's offset in it."""
        if not self._is_frame(row):
            return {}
        table = self.state.table
        return {"clip": str(table["media_key"].iat[row]),
                "offset": float(table["frame_offset_s"].iat[row])}

    def clip_file(self, photo_id: str) -> tuple[str, str] | None:
        """The clip a sampled frame of this run comes from: its path and media type."""
        row = self.state.row_of.get(photo_id)
        if row is None or not self._is_frame(row):
            return None
        return self._path_of(row), str(self.state.table["media_type"].iat[row])

    @staticmethod
    def _why(u: Unit) -> str | None:
        """Why the class shown is not the top of the probability list beside it."""
        if u.reviewed or u.blank or not u.alternatives or u.alternatives[0][0] == u.cls:
            return None
        if u.source == "human":
            return (f"the class is the vote of these photos' own classes; averaged over the "
                    f"photos, the probabilities rank {u.alternatives[0][0]} first")
        return (f"the class is the visit's vote: each photo votes for its own most likely "
                f"class, weighted by its confidence; averaged over the photos, the "
                f"probabilities rank {u.alternatives[0][0]} first")

    # ------------------------------------------------------------------ decisions
    def _catch_up(self) -> None:
        """Apply decisions another server on the same folder stored since we last looked, so
        that an edit made elsewhere is a conflict here, not silently overwritten."""
        known = self.state.decisions[-1].id if self.state.decisions else 0
        newer = self.log.since(known) if self.log is not None else []
        if newer:
            self.state.apply(newer)

    def _check(self, refs) -> list[Unit]:
        if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
            raise ValueError("units must be a list of {id, etag} objects")
        self._catch_up()
        units, stale = [], []
        for ref in refs:
            u = self.state.units.get(str(ref.get("id", "")))
            if u is None or u.etag != ref.get("etag"):
                stale.append(self._stale(str(ref.get("id", "")), u))
            else:
                units.append(u)
        if stale:
            raise Conflict(stale)
        return units

    def _stale(self, uid: str, unit: Unit | None) -> dict:
        """What became of a registration the page showed: the one that holds its photos
        now, and the decision that made it so (who, what, when)."""
        photos = self.served.get(uid) or (self._photo_ids(unit) if unit else ())
        if unit is None and photos:
            rows = [self.state.row_of[p] for p in photos if p in self.state.row_of]
            held = [self.state.unit_of_row[r] for r in rows]
            uid_now = max(set(held), key=held.count) if held else None
            unit = self.state.units.get(uid_now) if uid_now else None
        by = self._latest_decision(set(photos), unit.camera if unit else None)
        entry = {"id": uid, "now": self.summary(unit) if unit else None,
                 "by": {"reviewer": by.reviewer, "action": by.payload.get("action", by.kind),
                        "at": by.at, "id": by.id} if by else None}
        who = (("you, in another tab or window," if by.reviewer == self.reviewer
                else by.reviewer) if by else "someone")
        what = DONE.get(entry["by"]["action"], entry["by"]["action"]) if by else "changed"
        when = f" at {by.at[:16].replace('T', ' ')} UTC" if by else ""
        now = (f"now {unit.cls} ×{unit.count}, {len(unit.rows)} photo(s)" if unit
               else "its photos are no longer in the run")
        entry["message"] = f"{who} {what} it{when}: {now}"
        return entry

    def _latest_decision(self, photos: set[str], camera: str | None) -> Decision | None:
        for d in reversed(self.state.decisions):
            if photos.intersection(d.photos) or (
                    d.kind == "clock" and camera is not None and d.payload.get("camera") == camera):
                return d
        return None

    def _photo_ids(self, u: Unit) -> tuple[str, ...]:
        if not len(u.rows):
            return u.photo_ids
        return tuple(self.state.pid[u.rows])

    def _snapshot(self, u: Unit) -> dict:
        return {"unit": u.id, "camera": u.camera, "start": _time(u.start), "end": _time(u.end),
                "machine": u.machine_cls}

    def _writable(self) -> DecisionLog:
        if self.log is None:
            raise PermissionError("decisions are switched off: " + "; ".join(self.problems))
        return self.log

    def decide(self, body: dict) -> dict:
        log = self._writable()
        action = body.get("action")
        with self.lock:
            units = self._check(body.get("units") or [])
            if not units:
                raise ValueError("no registration given")
            if action == "merge" and len(units) == 1:  # `m`: with the one before it, as now
                previous = self.state.previous_unit(units[0])
                if previous is None:
                    raise ValueError("no earlier registration on this camera to merge with")
                units = [previous, units[0]]
            new = [self._decision(action, units, body)] if action in ("split", "merge") \
                else [self._decision(action, [u], body) for u in units]
            stored = log.append(self.reviewer, new)
            self.state.apply(stored)
            return {"saved": [d.id for d in stored], "units": self._units_of(stored),
                    "said": [self._said(d) for d in stored]}

    def _said(self, d: Decision) -> str:
        """What a stored decision did, in the words the status line shows."""
        p = d.payload
        where = f"{p.get('camera', '')}, {len(d.photos)} photo(s)"
        if d.kind == "label":
            return f"{DONE.get(p.get('action'), 'labelled')} {p['class']} ×{p['count']} ({where})"
        if d.kind == "empty":
            return f"marked empty ({where})"
        if d.kind == "split":
            at = d.photos.index(p["at"])
            return f"split {p.get('camera', '')} into {at} + {len(d.photos) - at} photo(s)"
        return f"{DONE.get(d.kind, d.kind)} {where}"

    def _decision(self, action: str, units: list[Unit], body: dict) -> NewDecision:
        u = units[0]
        snap = self._snapshot(u)
        if action == "accept":
            if u.blank:
                return NewDecision("empty", self._photo_ids(u), dict(snap, action="accept"))
            return NewDecision("label", self._photo_ids(u),
                               dict(snap, action="accept", **{"class": u.cls}, count=u.count))
        if action == "label":
            cls = str(body.get("cls") or "").strip()
            if not cls:
                raise ValueError("a class name is needed")
            if cls.lower() == EMPTY:
                return NewDecision("empty", self._photo_ids(u), dict(snap, action="empty"))
            return NewDecision("label", self._photo_ids(u), dict(
                snap, action="label", **{"class": cls}, count=max(1, int(u.count or 0))))
        if action == "count":
            count = int(body.get("count"))
            if not 0 <= count <= MAX_COUNT:
                raise ValueError(f"a count is a number from 0 to {MAX_COUNT}")
            if count == 0:
                return NewDecision("empty", self._photo_ids(u), dict(snap, action="count"))
            if u.blank:
                raise ValueError("choose a species before giving a count")
            return NewDecision("label", self._photo_ids(u),
                               dict(snap, action="count", **{"class": u.cls}, count=count))
        if action == "empty":
            return NewDecision("empty", self._photo_ids(u), dict(snap, action="empty"))
        if action == "split":
            ids = self._photo_ids(u)
            at = body.get("at")
            if at not in ids or ids.index(at) == 0:
                raise ValueError("split at a photo after the first one of the registration")
            return NewDecision("split", ids, dict(snap, action="split", at=at))
        if action == "merge":
            if len(units) != 2 or units[0].camera != units[1].camera:
                raise ValueError("merge needs two registrations of the same camera")
            ids = self._photo_ids(units[0]) + self._photo_ids(units[1])
            return NewDecision("merge", ids, dict(snap, action="merge",
                                                  merged=[v.id for v in units]))
        raise ValueError(f"unknown action {action!r}")

    def _units_of(self, decisions) -> list[dict]:
        """The units now holding the photos of these decisions (what the browser shows next)."""
        seen: dict[str, Unit] = {}
        for d in decisions:
            for p in d.photos:
                r = self.state.row_of.get(p)
                uid = self.state.unit_of_row[r] if r is not None else f"h{d.id}"
                if uid in self.state.units:
                    seen.setdefault(uid, self.state.units[uid])
        return [self.summary(u) for u in seen.values()]

    def undo(self) -> dict:
        log = self._writable()
        with self.lock:
            self._catch_up()
            mine = self.state.decisions_of(self.reviewer)
            if not mine:
                raise ValueError("nothing of yours to undo")
            last = mine[-1]
            stored = log.append(self.reviewer, [NewDecision("undo", last.photos,
                                                            {"undoes": last.id})])
            self.state.apply(stored)
            return {"undone": last.id, "kind": last.kind, "units": self._units_of([last]),
                    "said": [f"undid #{last.id}: {self._said(last)}"]}

    def clock(self, body: dict) -> dict:
        """Shift a camera's clock: by an offset, or so that one photo shows its true time
        (any form :func:`typed_time` reads); for all its photos, or from that photo on.
        Nothing that could not apply is stored."""
        log = self._writable()
        with self.lock:
            self._catch_up()
            s = self.state
            camera = body.get("camera")
            if not isinstance(camera, str) or camera not in s.by_camera:
                raise ValueError(f"no camera {camera!r} in this run")
            photo = body.get("photo")
            row = s.row_of.get(photo) if isinstance(photo, str) else None
            if photo is not None and (row is None or s.cam[row] != camera):
                raise ValueError(f"that photo is not one of camera {camera}'s")
            if body.get("true_time") not in (None, ""):
                if row is None or np.isnat(s.t[row]):
                    raise ValueError("give a photo with a time to set its true time")
                true = np.datetime64(typed_time(body["true_time"]), "ns")
                offset = round(int((true - s.t[row]).astype(np.int64)) / 1e9, 6)
            else:
                offset = body.get("offset_seconds")
            payload = {"camera": camera, "offset_seconds": offset, "from_time": None}
            clock_offset(payload)  # refuses what is not a number or not a clock error
            payload["offset_seconds"] = float(offset)
            if body.get("from_photo_on"):
                if row is None or np.isnat(s.camera_t[row]):
                    raise ValueError("'from this photo on' needs a photo with a time")
                payload["from_time"] = pd.Timestamp(s.camera_t[row]).isoformat()
            stored = log.append(self.reviewer, [NewDecision(
                "clock", (photo,) if row is not None else (), payload)])
            s.apply(stored)
            said = f"shifted the clock of {camera} by {_duration(float(offset))}"
            return {"saved": [d.id for d in stored], "offset_seconds": float(offset),
                    "said": [said]}

    # ------------------------------------------------------------------ photos
    def photo(self, photo_id: str, size: str) -> bytes | None:
        """A photo of this run at a display size, made once and cached on disk."""
        row = self.state.row_of.get(photo_id)
        if row is None or size not in PHOTO_SIZES:
            return None
        cached = self.cache / size / f"{photo_id}.jpg"
        if cached.exists():
            return cached.read_bytes()
        frame = int(self.state.table["frame_index"].iat[row]) if self._is_frame(row) else None
        data = thumbnail_jpeg(self._path_of(row), PHOTO_SIZES[size], quality=85, frame=frame)
        if data is not None:
            atomic_write_bytes(cached, data)
        return data

    def export(self) -> dict:
        with self.lock:
            regs, summary = export_run(self.out)
        return {"registrations": len(regs), "reviewed": int(regs["reviewed"].sum())
                if "reviewed" in regs else 0, "warnings": summary.warnings}

    def learn(self) -> dict:
        with self.lock:
            result = learn_run(self.out)
            self.state.learned = load_learned(self.out)
            self.state.rebuild()
            self._useful = (-1, {})
        return result


def _json(fn):
    """Run an action; user errors become a JSON message with the right status."""
    try:
        return JSONResponse(fn())
    except Conflict as c:
        return JSONResponse({"error": "changed elsewhere since you loaded it",
                             "conflict": c.units}, status_code=409)
    except KeyError as e:
        return JSONResponse({"error": f"no such registration: {e}"}, status_code=404)
    except PermissionError as e:
        return JSONResponse({"error": str(e)}, status_code=403)
    except (ValueError, TypeError) as e:
        return JSONResponse({"error": str(e)}, status_code=400)


async def _posted(request: Request, action) -> JSONResponse:
    """An action on the JSON object a page posted; anything else is a 400, not a crash."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return JSONResponse({"error": "the request body must be a JSON object"},
                            status_code=400)
    return _json(lambda: action(body))


def create_app(review: Review, token: str) -> Starlette:
    """The ASGI app; every route is under ``/t/{token}/``."""

    def token_required(handler):
        async def endpoint(request: Request):
            if not secrets.compare_digest(request.path_params.get("token", ""), token):
                return Response("not found", status_code=404)
            return await handler(request)
        return endpoint

    async def page(request: Request):
        html = render("traps_review.html", title=f"Review: {review.out.name}",
                      reviewer=review.reviewer, problems=review.problems,
                      base=f"/t/{token}/", static="/static/",
                      project=review.project)
        return HTMLResponse(html)

    async def queue(request: Request):
        return _json(lambda: review.queue(dict(request.query_params)))

    async def unit(request: Request):
        return _json(lambda: review.detail(request.path_params["uid"]))

    async def like(request: Request):
        return _json(lambda: review.like(request.path_params["uid"], dict(request.query_params)))

    async def decide(request: Request):
        return await _posted(request, review.decide)

    async def undo(request: Request):
        return _json(review.undo)

    async def clock(request: Request):
        return await _posted(request, review.clock)

    async def photo(request: Request):
        data = review.photo(request.path_params["pid"], request.path_params["size"])
        if data is None:
            return Response("photo not available", status_code=404)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400"})

    async def clip(request: Request):
        # The whole clip, with HTTP range requests (the browser's player seeks in it).
        found = review.clip_file(request.path_params["pid"])
        if found is None or not Path(found[0]).is_file():
            return Response("clip not available", status_code=404)
        return FileResponse(found[0], media_type=found[1],
                            headers={"Cache-Control": "private, max-age=86400"})

    async def export(request: Request):
        return _json(review.export)

    async def learn(request: Request):
        return _json(review.learn)

    routes = [
        Route("/t/{token}/", token_required(page)),
        Route("/t/{token}/api/queue", token_required(queue)),
        Route("/t/{token}/api/unit/{uid}", token_required(unit)),
        Route("/t/{token}/api/like/{uid}", token_required(like)),
        Route("/t/{token}/api/decide", token_required(decide), methods=["POST"]),
        Route("/t/{token}/api/undo", token_required(undo), methods=["POST"]),
        Route("/t/{token}/api/clock", token_required(clock), methods=["POST"]),
        Route("/t/{token}/api/export", token_required(export), methods=["POST"]),
        Route("/t/{token}/api/learn", token_required(learn), methods=["POST"]),
        Route("/t/{token}/photo/{size}/{pid}", token_required(photo)),
        Route("/t/{token}/clip/{pid}", token_required(clip)),
        Mount("/static", StaticFiles(packages=[("kadr", "static")]), name="static"),
    ]
    return Starlette(routes=routes)


def serve(out_dir: str | Path, host: str = "127.0.0.1", port: int = 0,
          reviewer: str = "reviewer", open_browser: bool = True, token: str | None = None,
          announce=print) -> None:
    """Serve the review app until interrupted; ``port`` 0 picks a free one."""
    import uvicorn

    review = Review(out_dir, reviewer)
    token = token or secrets.token_urlsafe(16)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: a keep-alive response is not held back ~40 ms by
    # Nagle's algorithm waiting for the browser's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections wait in the backlog from now on, not refused
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{sock.getsockname()[1]}/t/{token}/"
    for p in review.problems:
        announce(f"warning: {p}")
    announce(f"review {review.out} as {reviewer}: {url}")
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    config = uvicorn.Config(create_app(review, token), log_level="warning")
    # uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal again once
    # its handlers are gone: both end here, so the caller's final export always runs.
    def stopped(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
