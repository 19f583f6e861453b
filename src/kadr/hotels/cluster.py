"""``kadr hotels cluster``: group photos into themes, label each theme, draw an interactive map.

The seed's recipe: embed the captions with the CLIP text tower, reduce with
t-SNE, cluster with DBSCAN (eps 3, min_samples 3 on 1,000 photos), and label
each cluster with the caption whose embedding is nearest the cluster's mean.
Image embeddings (or both, concatenated), UMAP and HDBSCAN are options;
``--eps auto`` reads eps off the k-distance curve.

Large collections: PCA (to 50 dimensions), t-SNE and clustering are fitted
on a seeded sample of at most ``max_fit`` photos; every other photo is placed
at the mean position of its five nearest sampled neighbours (in the PCA
space) and takes their majority theme. The summary says when this happened.
The embeddings stay on disk (:mod:`kadr.hotels.theme_input`) and every pass
after the fit reads them a block at a time, so memory does not grow with the
collection beyond a few bytes a photo (its map position and theme); the map
draws a sample of at most ``MAP_POINTS`` photos.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.cluster import DBSCAN, HDBSCAN
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors

from kadr.core.group_sort import sorted_lookup
from kadr.core.progress import row_blocks
from kadr.core.remote import staged
from kadr.core.runner import RunSummary, WorkflowResult
from kadr.core.store import CsvAppender, atomic_open, atomic_write_table, atomic_write_text, output_folder
from kadr.hotels.theme_input import embed_input

MAP_POINTS = 50_000  # photos the map draws at most (a seeded sample beyond)


@dataclass
class ClusterSettings:
    embed: str = "caption"  # caption | image | both
    clip: str = "open_clip:ViT-L-14@openai"
    text_column: str = "caption"
    reduce: str = "tsne"  # tsne | umap | none
    cluster: str = "dbscan"  # dbscan | hdbscan
    eps: str = "auto"
    min_samples: int = 3
    max_fit: int = 50_000
    seed: int = 0
    progress: bool = True


def knee_eps(points: np.ndarray, k: int) -> float:
    """eps at the knee of the sorted k-distance curve (farthest point from its chord)."""
    nn = NearestNeighbors(n_neighbors=min(k + 1, len(points))).fit(points)
    d = np.sort(nn.kneighbors(points)[0][:, -1])
    x = np.linspace(0, 1, len(d))
    y = (d - d[0]) / max(d[-1] - d[0], 1e-12)
    knee = int(np.argmax(x - y))  # the curve is convex: its knee lies farthest below the chord
    return float(d[knee]) if d[knee] > 0 else float(d[d > 0].min(initial=1e-6))


def sample_rows(n: int, max_fit: int, seed: int) -> np.ndarray:
    """The row numbers the reduction and clustering are fitted on: all, or a seeded
    sample of ``max_fit`` (sorted)."""
    if n <= max_fit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_fit, replace=False))


def reduce_points(points: np.ndarray, method: str, seed: int) -> np.ndarray:
    """2-D map coordinates of ``points`` by t-SNE or UMAP; ``none`` returns them unchanged."""
    if method == "none":
        return points
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(points) - 1))
        return np.asarray(reducer.fit_transform(points), np.float32)
    if method != "tsne":
        raise ValueError("reduce must be tsne, umap or none")
    perplexity = float(min(30, max(2, (len(points) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
                ).fit_transform(points).astype(np.float32)


@dataclass
class ThemeFit:
    """What the fitted sample gives every photo: a projection (PCA, or none), the sampled
    points in that space, their map coordinates and themes. A sampled photo keeps its
    own; any other photo is placed at the mean of its ``k`` nearest sampled points and
    takes their majority theme."""

    pca: PCA | None
    sample: np.ndarray  # row numbers, sorted
    points: np.ndarray  # what neighbours are looked up among
    coords: np.ndarray  # [len(points), 2]
    labels: np.ndarray
    keep_own: bool
    note: str
    params: dict
    k: int = 5

    def __post_init__(self) -> None:
        self.neighbours = NearestNeighbors(n_neighbors=min(self.k, len(self.points))
                                           ).fit(self.points)

    def assign(self, first: int, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates and themes of the rows ``first`` .. ``first + len(emb)``."""
        coords = np.empty((len(emb), 2), np.float32)
        labels = np.empty(len(emb), np.int64)
        own = np.zeros(len(emb), bool)
        if self.keep_own:
            own, at = sorted_lookup(self.sample, np.arange(first, first + len(emb)))
            coords[own], labels[own] = self.coords[at[own]], self.labels[at[own]]
        if not own.all():
            rest = emb[~own]
            near = self.neighbours.kneighbors(self.pca.transform(rest) if self.pca else rest,
                                              return_distance=False)
            coords[~own] = self.coords[near].mean(1)
            labels[~own] = majority(self.labels[near])
        return coords, labels


def fit_themes(x: np.ndarray, sample: np.ndarray, n: int, settings: ClusterSettings) -> ThemeFit:
    """Reduce and cluster the sampled embeddings ``x`` (rows ``sample`` of ``n``).

    A sample with fewer distinct embeddings than a theme needs (every caption the
    same: a degenerate caption model, a collection of one scene) is not reduced at
    all (t-SNE divides by zero there): each distinct embedding is a theme, and every
    photo takes the theme of the one it is nearest.
    """
    whole = len(sample) == n
    distinct = np.unique(x.round(5), axis=0)
    if len(distinct) <= max(2, settings.min_samples):
        angle = 2 * np.pi * np.arange(len(distinct)) / len(distinct)
        coords = np.c_[np.cos(angle), np.sin(angle)].astype(np.float32) * (len(distinct) > 1)
        which = f"all {n:,} photos have" if whole else f"the {len(sample):,} sampled photos have"
        return ThemeFit(None, sample, distinct, coords, np.arange(len(distinct)), False,
                        f"{which} only {len(distinct)} distinct embedding(s), too few to reduce "
                        "or cluster: each distinct one is a theme",
                        {"method": "none (degenerate input)"}, k=1)
    pca = None
    if x.shape[1] > 50 and len(x) > 50:
        pca = PCA(n_components=50, random_state=settings.seed).fit(x)
    points = pca.transform(x) if pca else x
    reduced = reduce_points(points, settings.reduce, settings.seed)
    labels, params = cluster_points(reduced, settings.cluster, settings.eps, settings.min_samples)
    coords = reduced if settings.reduce != "none" else \
        np.c_[points[:, :2], np.zeros((len(points), max(0, 2 - points.shape[1])))]
    space = f" (PCA to {points.shape[1]} dims)" if pca else ""
    how = {"tsne": "t-SNE", "umap": "UMAP", "none": "no reduction: clustered in embedding space"
           }[settings.reduce]
    if whole:
        note = f"{how} on all {n:,} points{space}"
    else:
        note = (f"{how} fitted on a sample of {len(sample):,} of {n:,} points{space}; the others "
                "placed at the mean of their 5 nearest sampled neighbours and given their "
                "majority cluster")
    return ThemeFit(pca, sample, points, coords.astype(np.float32), labels, True, note, params)


def themes(emb: np.ndarray, settings: ClusterSettings
           ) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """Themes, map coordinates, a note and the clustering's parameters of embeddings held
    in memory (``run_cluster`` does the same a block at a time)."""
    sample = sample_rows(len(emb), settings.max_fit, settings.seed)
    fit = fit_themes(emb[sample], sample, len(emb), settings)
    coords, labels = fit.assign(0, emb)
    return labels, coords, fit.note, fit.params


def majority(votes: np.ndarray) -> np.ndarray:
    """Per row of ``votes`` (labels, -1 for noise), its most frequent label; ties go to the
    smallest. Vectorised over rows: k x k comparisons a row, no Python loop."""
    counts = (votes[:, :, None] == votes[:, None, :]).sum(axis=2)
    score = counts * (int(votes.max(initial=0)) + 3) - (votes + 1)  # more votes, then smaller
    return votes[np.arange(len(votes)), score.argmax(axis=1)]


def cluster_points(points: np.ndarray, method: str, eps: str | float, min_samples: int
                   ) -> tuple[np.ndarray, dict]:
    if method == "hdbscan":
        labels = HDBSCAN(min_cluster_size=max(2, min_samples)).fit_predict(points)
        return labels, {"method": "hdbscan", "min_cluster_size": max(2, min_samples)}
    if method != "dbscan":
        raise ValueError("cluster must be dbscan or hdbscan")
    e = knee_eps(points, min_samples) if str(eps) == "auto" else float(eps)
    labels = DBSCAN(eps=e, min_samples=min_samples).fit_predict(points)
    return labels, {"method": "dbscan", "eps": round(e, 4), "eps_from": "auto" if str(eps) == "auto"
                    else "user", "min_samples": min_samples}


class ThemeLabels:
    """Each theme's size, label and representatives, and its most distinctive phrases,
    tallied a block of photos at a time in two passes: :meth:`add_sums` (the mean
    embedding of each theme), then :meth:`add_nearest` (the photos nearest it: the first
    is the label, the seed's rule) and :meth:`add_phrases`."""

    def __init__(self, themes: int, dim: int, representatives: int = 5):
        self.sums = np.zeros((themes, dim))
        self.sizes = np.zeros(themes, np.int64)
        self.top = representatives
        self.best = {"cluster": np.zeros(0, np.int64), "distance": np.zeros(0),
                     "row": np.zeros(0, np.int64), "key": np.zeros(0, object),
                     "text": np.zeros(0, object)}
        self.phrases_everywhere: Counter[str] = Counter()
        self.phrases_in: dict[int, Counter[str]] = {}
        self.photos = 0

    def add_sums(self, labels: np.ndarray, emb: np.ndarray) -> None:
        member = labels >= 0
        self.sizes += np.bincount(labels[member], minlength=len(self.sizes))
        order = np.argsort(labels[member], kind="stable")
        ordered = labels[member][order]
        if len(ordered):
            starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
            self.sums[ordered[starts]] += np.add.reduceat(emb[member][order], starts, axis=0)

    def add_nearest(self, first: int, labels: np.ndarray, emb: np.ndarray, keys: np.ndarray,
                    texts: np.ndarray) -> None:
        member = np.flatnonzero(labels >= 0)
        means = (self.sums / np.maximum(self.sizes, 1)[:, None]).astype(emb.dtype)
        found = {"cluster": labels[member],
                 "distance": np.linalg.norm(emb[member] - means[labels[member]], axis=1),
                 "row": first + member, "key": keys[member], "text": texts[member]}
        both = {k: np.concatenate([self.best[k], found[k]]) for k in self.best}
        order = np.lexsort((both["row"], both["distance"], both["cluster"]))
        cluster = both["cluster"][order]
        starts = np.r_[0, np.flatnonzero(cluster[1:] != cluster[:-1]) + 1]
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        keep = order[rank < self.top]
        self.best = {k: v[keep] for k, v in both.items()}

    def add_phrases(self, labels: np.ndarray, phrases: np.ndarray) -> None:
        """Count each photo's phrases (a JSON list of [phrase, score]), overall and per theme."""
        self.photos += len(labels)
        for label, cell in zip(labels.tolist(), phrases, strict=True):
            if not isinstance(cell, str):
                continue
            found = {p for p, _ in json.loads(cell)}
            self.phrases_everywhere.update(found)
            if label >= 0:
                self.phrases_in.setdefault(label, Counter()).update(found)

    def table(self) -> pd.DataFrame:
        """One row per theme: cluster, size, label, representatives (JSON keys), phrases
        (JSON: the five with the highest lift, each in at least two of its photos)."""
        rows = []
        for c in np.flatnonzero(self.sizes):
            mine = self.best["cluster"] == c
            row = {"cluster": int(c), "size": int(self.sizes[c]),
                   "label": self.best["text"][mine][0],
                   "representatives": json.dumps(self.best["key"][mine].tolist())}
            if self.phrases_everywhere:
                counts = self.phrases_in.get(int(c), Counter())
                lift = {p: (k / self.sizes[c]) / (self.phrases_everywhere[p] / self.photos)
                        for p, k in counts.items() if k >= 2}
                row["phrases"] = json.dumps(sorted(lift, key=lambda p: (-lift[p], p))[:5])
            rows.append(row)
        return pd.DataFrame(rows, columns=["cluster", "size", "label", "representatives", "phrases"])


def label_clusters(labels: np.ndarray, emb: np.ndarray, texts: list[str], keys: list[str],
                   phrases: list[str | None] | None = None) -> pd.DataFrame:
    """:class:`ThemeLabels` of photos held in memory."""
    tally = ThemeLabels(int(labels.max(initial=-1)) + 1, emb.shape[1])
    tally.add_sums(labels, emb)
    tally.add_nearest(0, labels, emb, np.asarray(keys, object), np.asarray(texts, object))
    if phrases is not None:
        tally.add_phrases(labels, np.asarray(phrases, object))
    return tally.table()


@dataclass
class MapRows:
    """What the map page shows of a large run: a seeded sample of the photos (a scatter of
    millions is neither drawn nor read), and each theme's first photos for its gallery."""

    sample: np.ndarray  # row numbers shown, sorted
    gallery_size: int = 24

    def __post_init__(self) -> None:
        self.points: list[pd.DataFrame] = []
        self.members: list[pd.DataFrame] = []
        self.taken: Counter[int] = Counter()

    def add(self, first: int, rows: pd.DataFrame) -> None:
        shown, _ = sorted_lookup(self.sample, first + np.arange(len(rows)))
        self.points.append(rows[shown].assign(text=rows["text"][shown].str.slice(0, 200)))
        rank = rows.groupby("cluster").cumcount().to_numpy() + \
            rows["cluster"].map(self.taken).fillna(0).to_numpy(int)
        wanted = rows[(rank < self.gallery_size) & (rows["cluster"] >= 0).to_numpy()]
        self.members.append(wanted)
        self.taken.update(wanted["cluster"].tolist())

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return pd.concat(self.points, ignore_index=True), pd.concat(self.members, ignore_index=True)


@staged
def run_cluster(input_path: str, out: str, settings: ClusterSettings) -> WorkflowResult:
    """Group the photos of a captions table or store into themes; write the assignments,
    the themes, the noise and the map under ``out``."""
    out_dir = Path(out)
    output_folder(out_dir)
    data = embed_input(input_path, out_dir, embed=settings.embed, clip=settings.clip,
                       text_column=settings.text_column, progress=settings.progress)
    if data.rows == 0:
        raise ValueError("no photo could be embedded: nothing to cluster")
    if data.rows < settings.min_samples + 1:
        raise ValueError(f"{data.rows} usable rows: too few to cluster")
    sample = sample_rows(data.rows, settings.max_fit, settings.seed)
    fit = fit_themes(data.take(sample), sample, data.rows, settings)
    coords = np.empty((data.rows, 2), np.float32)  # 12 bytes a photo: held whole
    labels = np.empty(data.rows, np.int64)
    tally = ThemeLabels(int(fit.labels.max(initial=-1)) + 1, data.dim)
    for first, _, emb in row_blocks(data.blocks(columns=["key"]), "assign", data.rows,
                                    settings.progress, rows=lambda block: len(block[2])):
        end = first + len(emb)
        coords[first:end], labels[first:end] = fit.assign(first, emb)
        tally.add_sums(labels[first:end], emb)
    shown = MapRows(sample_rows(data.rows, MAP_POINTS, settings.seed))
    schema = pa.schema([("key", pa.string()), ("path", pa.string()), ("x", pa.float32()),
                        ("y", pa.float32()), ("cluster", pa.int64()), ("text", pa.string())])
    with atomic_open(out_dir / "assignments.parquet", binary=True) as assign_out, \
            atomic_open(out_dir / "noise.csv") as noise_out, \
            pq.ParquetWriter(assign_out, schema, compression="zstd") as writer:
        noise = CsvAppender(noise_out)
        for first, rows, emb in row_blocks(data.blocks(), "label and write", data.rows,
                                           settings.progress, rows=lambda block: len(block[2])):
            end = first + len(rows)
            block = pd.DataFrame({"key": rows["key"], "path": rows["path"],
                                  "x": coords[first:end, 0], "y": coords[first:end, 1],
                                  "cluster": labels[first:end], "text": rows["text"].fillna("")})
            tally.add_nearest(first, labels[first:end], emb, rows["key"].to_numpy(object),
                              block["text"].to_numpy(object))
            tally.add_phrases(labels[first:end], rows["phrases"].to_numpy(object))
            writer.write_table(pa.Table.from_pandas(block, schema, preserve_index=False))
            noise.write(block[block["cluster"] == -1])
            shown.add(first, block)
    clusters = tally.table()
    atomic_write_table(out_dir / "clusters.parquet", pa.Table.from_pandas(clusters, preserve_index=False))
    atomic_write_text(out_dir / "clusters.csv", clusters.to_csv(index=False))
    summary = {"photos": data.rows, "skipped_not_ok": data.skipped,
               "clusters": len(clusters), "noise": int((labels == -1).sum()),
               "reduction": fit.note, **fit.params, "embed": settings.embed,
               "map_points": len(shown.sample)}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    points, members = shown.frames()
    atomic_write_text(out_dir / "map.html", render_map(points, clusters, summary, members=members))
    # Themes read a table, not photos: no photo pass to count.
    return WorkflowResult(RunSummary(), out_dir, out_dir / "clusters.parquet", summary)


def render_map(assign: pd.DataFrame, clusters: pd.DataFrame, summary: dict,
               max_thumbs: int = 3000, gallery_size: int = 24,
               members: pd.DataFrame | None = None) -> str:
    """Plotly scatter (inlined), hover shows caption and thumbnail, click opens the gallery.

    ``assign``: the photos drawn (all, or a sample); ``members``: the photos each
    theme's gallery shows (the first ``gallery_size`` of each, from ``assign`` when not
    given)."""
    import plotly.graph_objects as go

    from kadr.core.html import figure, render, thumbnail

    rng = np.random.default_rng(0)
    thumb_idx = set(rng.choice(len(assign), min(len(assign), max_thumbs), replace=False).tolist())
    labels = dict(zip(clusters["cluster"], clusters["label"], strict=True))
    fig = go.Figure()
    notes = [f"How: {summary['reduction']}."]
    if summary.get("photos", len(assign)) > len(assign):
        notes.append(f"The map draws a sample of {len(assign):,} of the {summary['photos']:,} "
                     "photos; the tables list them all.")
    thumbs: dict[str, str] = {}
    for c, part in assign.groupby("cluster", sort=True):
        name = "noise" if c == -1 else f"{c}: {labels.get(c, '')[:40]}"
        fig.add_trace(go.Scattergl(
            x=part["x"], y=part["y"], mode="markers", name=name,
            marker={"size": 6, "opacity": 0.8, "color": "#bbb" if c == -1 else None},
            customdata=np.c_[part["key"], np.full(len(part), c)],
            # plotly renders hover text as HTML: escape what came from captions.
            hovertext=[html.escape(t[:200]) for t in part["text"]], hoverinfo="text"))
        for i in part.index.intersection(list(thumb_idx)):
            src = thumbnail(part.at[i, "path"], 120)
            if src:
                thumbs[part.at[i, "key"]] = src
    fig.update_layout(height=700, legend={"itemsizing": "constant"},
                      title=html.escape(f"{summary['clusters']} themes, {summary['noise']} noise "
                                        "points"))
    if members is None:
        members = assign
    members = members.groupby("cluster").head(gallery_size)
    galleries = [
        {"cluster": c["cluster"], "size": c["size"], "label": c["label"],
         "members": [{"key": k, "src": thumbnail(p, 160), "text": t[:80]}
                     for k, p, t in members.loc[members["cluster"] == c["cluster"],
                                                ["key", "path", "text"]].itertuples(index=False)]}
        for c in clusters.to_dict("records")]
    themes = clusters[["cluster", "size", "label", "phrases"]].to_dict("records")
    return render("hotels_themes.html", title="Photo themes", with_plotly=True,
                  map=figure(fig, div_id="map"), notes=notes,
                  galleries=galleries, themes=themes, thumbs=thumbs)
