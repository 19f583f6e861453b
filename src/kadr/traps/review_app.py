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
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kadr.core.html import render, thumbnail_jpeg
from kadr.core.store import atomic_write_bytes
from kadr.traps.decisions import DecisionLog, DecisionLogError, NewDecision
from kadr.traps.review import EMPTY, ReviewState, Unit, load_learned, read_run

PHOTO_SIZES = {"thumb": 200, "display": 1280}
QUEUE_LIMIT = 1000
CACHE_FOLDER = "review-cache"


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

    @staticmethod
    def _project_classes(settings: dict) -> list[str]:
        from kadr.traps.pipeline import saved_prompts

        prompts = saved_prompts(settings)
        return [n for n in prompts.names if n not in prompts.background] if prompts else []

    # ------------------------------------------------------------------ views
    def summary(self, u: Unit) -> dict:
        d = u.decision
        return {"id": u.id, "etag": u.etag, "camera": u.camera, "cls": u.cls, "count": u.count,
                "prob": u.prob, "start": _time(u.start), "end": _time(u.end),
                "photos": len(u.rows), "reviewed": u.reviewed, "source": u.source,
                "flags": u.flags, "blank": u.blank,
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
        reviewed = q.get("reviewed", "no")
        if reviewed in ("yes", "no"):
            units = [u for u in units if u.reviewed == (reviewed == "yes")]
        lo, hi = float(q.get("pmin") or 0), float(q.get("pmax") or 1)
        units = [u for u in units if lo <= (u.prob if u.prob is not None else 1.0) <= hi]
        if q.get("sort") == "time":
            def order(u):
                return u.camera, u.start or pd.Timestamp.min, u.id
        else:  # least certain first; blanks after animals at equal certainty
            def order(u):
                return -u.uncertainty, u.blank, u.camera, u.id
        offset = int(q.get("offset") or 0)
        # Only the page is sorted out of the whole queue (a heap, not a full sort).
        page = heapq.nsmallest(offset + QUEUE_LIMIT, units, key=order)[offset:]
        return {"total": len(units), "units": [self.summary(u) for u in page],
                "cameras": cameras,
                "classes": self.state.classes(self.project)}

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
                "time": _time(s.t[r]), "time_camera": _time(s.table["time"].iat[r]),
                "time_source": s.source[r], "cls": s.cls[r],
                "prob": None if np.isnan(s.cls_prob[r]) else float(s.cls_prob[r]),
                "boxes": [{"bbox": d["bbox"], "conf": d["conf"], "label": d["label"]}
                          for d in dets if d.get("category") == "animal" and d["conf"] >= 0.1],
            })
        same_cam = sorted((self.state.units[v] for v in self.state.by_camera[u.camera]),
                          key=lambda v: (v.start or pd.Timestamp.min, v.id))
        i = next(k for k, v in enumerate(same_cam) if v.id == u.id)
        neighbours = [dict(self.summary(v), here=v.id == u.id)
                      for v in same_cam[max(0, i - 3): i + 4]]
        previous = same_cam[i - 1] if i > 0 else None
        return dict(self.summary(u), photo_list=photos, alternatives=u.alternatives,
                    neighbours=neighbours, machine_cls=u.machine_cls,
                    previous=self.summary(previous) if previous else None,
                    decided_at=u.decision.at if u.decision else None)

    # ------------------------------------------------------------------ decisions
    def _catch_up(self) -> None:
        """Apply decisions another server on the same folder stored since we last looked, so
        that an edit made elsewhere is a conflict here, not silently overwritten."""
        known = self.state.decisions[-1].id if self.state.decisions else 0
        newer = self.log.since(known) if self.log is not None else []
        if newer:
            self.state.apply(newer)

    def _check(self, refs: list[dict]) -> list[Unit]:
        self._catch_up()
        units, stale = [], []
        for ref in refs:
            u = self.state.units.get(ref.get("id", ""))
            if u is None or u.etag != ref.get("etag"):
                stale.append({"id": ref.get("id"), "now": self.summary(u) if u else None})
            else:
                units.append(u)
        if stale:
            raise Conflict(stale)
        return units

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
            new = [self._decision(action, units, body)] if action in ("split", "merge") \
                else [self._decision(action, [u], body) for u in units]
            stored = log.append(self.reviewer, new)
            self.state.apply(stored)
            return {"saved": [d.id for d in stored], "units": self._units_of(stored)}

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
            if count < 0:
                raise ValueError("a count cannot be negative")
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
            return {"undone": last.id, "kind": last.kind, "units": self._units_of([last])}

    def clock(self, body: dict) -> dict:
        """Shift a camera's clock: by an offset, or so that one photo shows its true time;
        for all its photos, or from that photo on."""
        log = self._writable()
        with self.lock:
            self._catch_up()
            camera = str(body["camera"])
            photo = body.get("photo")
            row = self.state.row_of.get(photo) if photo else None
            if photo and row is None:
                raise ValueError("that photo is not part of this run")
            if body.get("true_time"):
                if row is None:
                    raise ValueError("give the photo whose true time you typed")
                offset = (pd.Timestamp(body["true_time"])
                          - pd.Timestamp(self.state.times.iat[row])).total_seconds()
            else:
                offset = float(body["offset_seconds"])
            from_time = (_time(self.state.table["time"].iat[row])
                         if body.get("from_photo_on") and row is not None else None)
            stored = log.append(self.reviewer, [NewDecision(
                "clock", (photo,) if photo else (),
                {"camera": camera, "offset_seconds": offset, "from_time": from_time})])
            self.state.apply(stored)
            return {"saved": [d.id for d in stored], "offset_seconds": offset}

    # ------------------------------------------------------------------ photos
    def photo(self, photo_id: str, size: str) -> bytes | None:
        """A photo of this run at a display size, made once and cached on disk."""
        row = self.state.row_of.get(photo_id)
        if row is None or size not in PHOTO_SIZES:
            return None
        cached = self.cache / size / f"{photo_id}.jpg"
        if cached.exists():
            return cached.read_bytes()
        data = thumbnail_jpeg(str(self.state.table["path"].iat[row]), PHOTO_SIZES[size],
                              quality=85)
        if data is not None:
            atomic_write_bytes(cached, data)
        return data

    def export(self) -> dict:
        from kadr.traps.pipeline import export_run

        with self.lock:
            regs, summary = export_run(self.out)
        return {"registrations": len(regs), "reviewed": int(regs["reviewed"].sum())
                if "reviewed" in regs else 0, "warnings": summary.warnings}

    def learn(self) -> dict:
        from kadr.traps.learn import learn_run

        with self.lock:
            result = learn_run(self.out)
            self.state.learned = load_learned(self.out)
            self.state.rebuild()
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


def create_app(review: Review, token: str) -> Starlette:
    """The ASGI app; every route is under ``/t/{token}/``."""

    def guarded(handler):
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

    async def decide(request: Request):
        body = await request.json()
        return _json(lambda: review.decide(body))

    async def undo(request: Request):
        return _json(review.undo)

    async def clock(request: Request):
        body = await request.json()
        return _json(lambda: review.clock(body))

    async def photo(request: Request):
        data = review.photo(request.path_params["pid"], request.path_params["size"])
        if data is None:
            return Response("photo not available", status_code=404)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400"})

    async def export(request: Request):
        return _json(review.export)

    async def learn(request: Request):
        return _json(review.learn)

    routes = [
        Route("/t/{token}/", guarded(page)),
        Route("/t/{token}/api/queue", guarded(queue)),
        Route("/t/{token}/api/unit/{uid}", guarded(unit)),
        Route("/t/{token}/api/decide", guarded(decide), methods=["POST"]),
        Route("/t/{token}/api/undo", guarded(undo), methods=["POST"]),
        Route("/t/{token}/api/clock", guarded(clock), methods=["POST"]),
        Route("/t/{token}/api/export", guarded(export), methods=["POST"]),
        Route("/t/{token}/api/learn", guarded(learn), methods=["POST"]),
        Route("/t/{token}/photo/{size}/{pid}", guarded(photo)),
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
    uvicorn.Server(config).run(sockets=[sock])
