"""``kadr hotels cluster``: group photos into themes, label each theme, draw an interactive map.

The seed's recipe: embed the captions with the CLIP text tower, reduce with
t-SNE, cluster with DBSCAN (eps 3, min_samples 3 on 1,000 photos), and label
each cluster with the caption whose embedding is nearest the cluster's mean.
Image embeddings (or both, concatenated), UMAP and HDBSCAN are options;
``--eps auto`` reads eps off the k-distance curve.

Large collections: t-SNE is fitted on at most ``max_fit`` points (after PCA
to 50 dimensions); the remaining points are placed at the mean position of
their nearest fitted neighbours in embedding space. The summary says when
this happened.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import DBSCAN, HDBSCAN
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors

from kadr.core.models import load_model
from kadr.core.remote import staged
from kadr.core.store import atomic_write_table, atomic_write_text


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


def reduce_embeddings(x: np.ndarray, method: str, max_fit: int, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates, and a sentence saying what was done."""
    coords, note, _ = reduce_with_sample(x, method, max_fit, seed)
    return coords, note


def reduce_with_sample(x: np.ndarray, method: str, max_fit: int, seed: int
                       ) -> tuple[np.ndarray, str, np.ndarray]:
    """Coordinates, a note, and the indices the reduction was fitted on (all, or a sample)."""
    n = len(x)
    if method == "none":
        return x, "no reduction: clustered in embedding space", np.arange(n)
    xp = PCA(n_components=min(50, x.shape[1], n), random_state=seed).fit_transform(x) \
        if x.shape[1] > 50 and n > 50 else x
    fit_idx = np.arange(n)
    if n > max_fit:
        fit_idx = np.sort(np.random.default_rng(seed).choice(n, max_fit, replace=False))
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1))
        reducer.fit(xp[fit_idx])
        coords = reducer.transform(xp) if n > max_fit else reducer.embedding_
        note = f"UMAP on {len(fit_idx):,} of {n:,} points"
        return np.asarray(coords, np.float32), note, fit_idx
    if method != "tsne":
        raise ValueError("reduce must be tsne, umap or none")
    perplexity = float(min(30, max(2, (len(fit_idx) - 1) / 3)))
    fitted = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
                  ).fit_transform(xp[fit_idx])
    if n <= max_fit:
        return (fitted.astype(np.float32),
                f"t-SNE on all {n:,} points (PCA to {xp.shape[1]} dims)", fit_idx)
    coords = np.zeros((n, 2), np.float32)
    coords[fit_idx] = fitted
    rest = np.setdiff1d(np.arange(n), fit_idx)
    nn = NearestNeighbors(n_neighbors=5).fit(xp[fit_idx])
    idx = nn.kneighbors(xp[rest], return_distance=False)
    coords[rest] = fitted[idx].mean(1)
    return coords, (f"t-SNE fitted on a sample of {max_fit:,} of {n:,} points; the others placed "
                    "at the mean of their 5 nearest sampled neighbours and given their "
                    "majority cluster"), fit_idx


def propagate_labels(x: np.ndarray, fit_idx: np.ndarray, fit_labels: np.ndarray,
                     k: int = 5) -> np.ndarray:
    """Labels for all points: the sample's own, the rest by majority of k nearest sampled."""
    labels = np.full(len(x), -1)
    labels[fit_idx] = fit_labels
    rest = np.setdiff1d(np.arange(len(x)), fit_idx)
    if len(rest):
        idx = NearestNeighbors(n_neighbors=min(k, len(fit_idx))).fit(x[fit_idx]).kneighbors(
            x[rest], return_distance=False)
        labels[rest] = majority(fit_labels[idx])
    return labels


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


def label_clusters(labels: np.ndarray, emb: np.ndarray, texts: list[str], keys: list[str],
                   phrases: list[list[str]] | None) -> pd.DataFrame:
    """Per cluster: size, the caption nearest the mean embedding, representatives, phrases."""
    rows = []
    overall: dict[str, float] = {}
    if phrases:
        for ps in phrases:
            for p in set(ps):
                overall[p] = overall.get(p, 0) + 1
    n = len(labels)
    for c in sorted(set(labels) - {-1}):
        idx = np.flatnonzero(labels == c)
        mean = emb[idx].mean(0)
        d = np.linalg.norm(emb[idx] - mean, axis=1)
        order = idx[np.argsort(d)]
        row = {"cluster": int(c), "size": len(idx), "label": texts[order[0]],
               "representatives": json.dumps([keys[i] for i in order[:5]])}
        if phrases:
            counts: dict[str, int] = {}
            for i in idx:
                for p in set(phrases[i]):
                    counts[p] = counts.get(p, 0) + 1
            lift = {p: (k / len(idx)) / (overall[p] / n) for p, k in counts.items() if k >= 2}
            row["phrases"] = json.dumps(sorted(lift, key=lambda p: -lift[p])[:5])
        rows.append(row)
    return pd.DataFrame(rows, columns=["cluster", "size", "label", "representatives", "phrases"])


def themes(emb: np.ndarray, settings: ClusterSettings):
    """Reduce, cluster (on the fitted sample when the input is large), propagate labels.

    Input with fewer distinct embeddings than a theme needs (every caption the
    same: a degenerate caption model, a collection of one scene) is not
    reduced at all (t-SNE divides by zero there): each distinct embedding is
    one theme, and the note says so.
    """
    distinct, inverse = np.unique(emb.round(5), axis=0, return_inverse=True)
    if len(distinct) <= max(2, settings.min_samples):
        angle = 2 * np.pi * inverse.ravel() / len(distinct)
        coords = np.c_[np.cos(angle), np.sin(angle)].astype(np.float32) * (len(distinct) > 1)
        note = (f"all {len(emb):,} photos have only {len(distinct)} distinct embedding(s), too few "
                "to reduce or cluster: each distinct one is a theme")
        return inverse.ravel().astype(int), coords, note, {"method": "none (degenerate input)"}
    coords, note, fit_idx = reduce_with_sample(emb, settings.reduce, settings.max_fit,
                                               settings.seed)
    fit_labels, params = cluster_points(coords[fit_idx], settings.cluster, settings.eps,
                                        settings.min_samples)
    labels = propagate_labels(emb, fit_idx, fit_labels)
    return labels, coords, note, params


def _load_input(path: str) -> pd.DataFrame:
    p = Path(path)
    if p.is_dir():
        for name in ("captions.parquet", "assignments.parquet"):
            if (p / name).exists():
                return pd.read_parquet(p / name)
        from kadr.core.store import read_shards

        return read_shards(p).to_pandas()
    return pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)


def embeddings_for(df: pd.DataFrame, settings: ClusterSettings, out_dir: Path
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings to cluster and, per row, whether it has one (its photo could be embedded)."""
    parts = []
    usable = np.ones(len(df), bool)
    if settings.embed in ("caption", "both"):
        from kadr.core.text_cache import text_embeddings

        model = load_model(settings.clip, kind="image-text")
        parts.append(text_embeddings(model, df[settings.text_column].fillna("").tolist()))
    if settings.embed in ("image", "both"):
        if "embedding" in df and df["embedding"].notna().all():
            parts.append(np.stack(df["embedding"].to_numpy()).astype(np.float32))
        else:
            from kadr.core.store import read_shards
            from kadr.embed import embed_photos

            # Each file once (a photo listed twice is embedded once), failures left out.
            manifest = out_dir / "image_manifest.csv"
            atomic_write_text(manifest, df[["path"]].drop_duplicates().to_csv(index=False))
            embed_photos(str(manifest), str(out_dir / "image.store"), settings.clip,
                         progress=settings.progress)
            img = read_shards(out_dir / "image.store", ["path", "status", "embedding"]).to_pandas()
            img = img[img["status"] == "ok"].drop_duplicates("path").set_index("path")["embedding"]
            usable &= df["path"].isin(img.index).to_numpy()
            dim = len(img.iloc[0]) if len(img) else 1
            parts.append(np.stack([np.asarray(img[p], np.float32) if ok else np.zeros(dim, np.float32)
                                   for p, ok in zip(df["path"], usable, strict=True)]))
    if not parts:
        raise ValueError("--embed must be caption, image or both")
    return np.concatenate(parts, axis=1) / np.sqrt(len(parts)), usable


@staged
def run_cluster(input_path: str, out: str, settings: ClusterSettings) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = _load_input(input_path)
    if "status" in df:
        skipped = df[df["status"] != "ok"].assign(skipped_because="its row's status is not ok")
        df = df[df["status"] == "ok"].reset_index(drop=True)
    else:
        skipped = df.iloc[:0].assign(skipped_because="")
    if len(df) < settings.min_samples + 1:
        raise ValueError(f"{len(df)} usable rows: too few to cluster")
    emb, usable = embeddings_for(df, settings, out_dir)
    if not usable.all():
        skipped = pd.concat([skipped, df[~usable].assign(
            skipped_because="the photo could not be embedded (see image.store)")])
        df, emb = df[usable].reset_index(drop=True), emb[usable]
    if len(df) == 0:
        raise ValueError("no photo could be embedded: nothing to cluster")
    atomic_write_text(out_dir / "skipped.csv", skipped.drop(
        columns=[c for c in ("embedding",) if c in skipped]).to_csv(index=False))
    labels, coords, reduce_note, params = themes(emb, settings)
    phrases = None
    if "phrases" in df:
        phrases = [[p for p, _ in json.loads(s)] if isinstance(s, str) else [] for s in df["phrases"]]
    texts = df[settings.text_column].fillna("").tolist() if settings.text_column in df \
        else df["key"].tolist()
    clusters = label_clusters(labels, emb, texts, df["key"].tolist(), phrases)
    xy = coords[:, :2] if coords.shape[1] >= 2 else np.c_[coords, np.zeros(len(coords))]
    assign = pd.DataFrame({"key": df["key"], "path": df.get("path", df["key"]), "x": xy[:, 0],
                           "y": xy[:, 1], "cluster": labels, "text": texts})
    import pyarrow as pa

    atomic_write_table(out_dir / "assignments.parquet", pa.Table.from_pandas(assign, preserve_index=False))
    atomic_write_table(out_dir / "clusters.parquet", pa.Table.from_pandas(clusters, preserve_index=False))
    atomic_write_text(out_dir / "clusters.csv", clusters.to_csv(index=False))
    atomic_write_text(out_dir / "noise.csv", assign[assign["cluster"] == -1].to_csv(index=False))
    summary = {"photos": len(df), "skipped_not_ok": len(skipped), "clusters": len(clusters),
               "noise": int((labels == -1).sum()), "reduction": reduce_note, **params,
               "embed": settings.embed}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out_dir / "map.html", render_map(assign, clusters, summary))
    return summary


def render_map(assign: pd.DataFrame, clusters: pd.DataFrame, summary: dict,
               max_thumbs: int = 3000, gallery_size: int = 24) -> str:
    """Plotly scatter (inlined), hover shows caption and thumbnail, click opens the gallery."""
    import plotly.graph_objects as go

    from kadr.core.html import figure, render, thumbnail

    rng = np.random.default_rng(0)
    thumb_idx = set(rng.choice(len(assign), min(len(assign), max_thumbs), replace=False).tolist())
    labels = dict(zip(clusters["cluster"], clusters["label"], strict=True))
    fig = go.Figure()
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
                                        f"points ({summary['reduction']})"))
    members = assign.groupby("cluster").head(gallery_size)
    galleries = [
        {"cluster": c["cluster"], "size": c["size"], "label": c["label"],
         "members": [{"key": k, "src": thumbnail(p, 160), "text": t[:80]}
                     for k, p, t in members.loc[members["cluster"] == c["cluster"],
                                                ["key", "path", "text"]].itertuples(index=False)]}
        for c in clusters.to_dict("records")]
    themes = clusters[["cluster", "size", "label", "phrases"]].to_dict("records")
    return render("hotels_themes.html", title="Photo themes", with_plotly=True,
                  map=figure(fig, div_id="map"),
                  galleries=galleries, themes=themes, thumbs=thumbs)
