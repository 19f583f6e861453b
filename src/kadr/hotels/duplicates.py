"""Families of copies in a hotel collection: exact (same bytes), near (perceptual hashes within
a few bits, found without an all-pairs comparison) and rotated copies, with the turn that
makes each member upright."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from kadr.core.group_sort import sorted_lookup
from kadr.core.status import PhotoStatus

HASH_BITS = 64
ROTATIONS = (0, 90, 180, 270)  # counter-clockwise degrees applied to the photo


MAX_BUCKET_COMPARISONS = 4_000_000
_ROWS = 32_768  # rows of a probed at once: their arrays stay in cache
_CANDIDATES = 2_000_000  # candidate pairs checked at once (bounded memory)
MAX_CHUNK_BITS = 22  # a chunk's lookup table has 2**bits entries


def _chunking(max_distance: int) -> tuple[list[int], int]:
    """Chunk widths and the probe radius: with m chunks, two hashes within ``max_distance``
    bits differ in at most ``max_distance // m`` bits on some chunk (pigeonhole). Radius 1
    keeps the chunks wide (few false candidates) at 1 + width probes per chunk."""
    m = max(-(-HASH_BITS // MAX_CHUNK_BITS), -(-(max_distance + 1) // 2))
    widths = [HASH_BITS // m + (1 if i < HASH_BITS % m else 0) for i in range(m)]
    return widths, max_distance // m


def hash_pairs(a: np.ndarray, b: np.ndarray, max_distance: int,
               max_bucket: int = MAX_BUCKET_COMPARISONS,
               skipped: dict | None = None, upper: bool = False) -> np.ndarray:
    """Pairs ``[i, j]`` (sorted, unique) with popcount(a[i] ^ b[j]) <= ``max_distance``;
    with ``upper`` (a set searched against itself) only those with i < j.

    Each 64-bit hash is split into chunks of at most 22 bits so that two hashes
    within ``max_distance`` agree on some chunk up to one bit (see
    :func:`_chunking`). Per chunk, ``a`` and ``b`` are put in buckets of equal
    chunk values; each of ``a``'s chunks, and each with one bit flipped, is
    looked up in ``b``'s buckets, and the candidates are checked on the whole
    hash, all in NumPy blocks. The cost grows with the photos, not their square,
    while buckets stay small. A pair is kept only at the first chunk that can
    find it, so no pair is gathered twice. A bucket whose comparisons would
    exceed ``max_bucket`` is skipped in that probe (its pairs are still found
    through any other chunk they share); ``skipped`` counts them.
    """
    a, b = a.astype(np.uint64), b.astype(np.uint64)
    widths, radius = _chunking(max_distance)
    shifts = [sum(widths[:k]) for k in range(len(widths))]
    found: list[np.ndarray] = []
    hot_before = np.zeros(len(a), bool)  # rows with a skipped bucket in an earlier chunk
    for chunk, (w, shift) in enumerate(zip(widths, shifts, strict=True)):
        ka, in_a = _buckets(a, w, shift)
        _, in_b = _buckets(b, w, shift)
        # Both sides in bucket order: a block of a's rows probes neighbouring buckets of b,
        # so lookups and reads run through memory instead of jumping (the 1M-photo cost).
        a_sorted, ka_sorted, b_sorted = a[in_a.order], ka[in_a.order], b[in_b.order]
        hot_here = np.zeros(len(a), bool)
        for top in range(0, len(a), _ROWS):
            keys = ka_sorted[top:top + _ROWS]
            limit = max_bucket // in_a.size[keys]  # more hits than this: a hot bucket
            for flip in [0, *(1 << k for k in range(w))][: 1 + w * radius]:
                probe = keys ^ np.int32(flip)
                hits = in_b.size[probe]
                hot = hits > limit
                if hot.any():
                    hot_here[in_a.order[top:top + _ROWS][hot]] = True
                    if skipped is not None:
                        skipped["comparisons"] = (skipped.get("comparisons", 0)
                                                  + int(hits[hot].sum()))
                        skipped["buckets"] = (skipped.get("buckets", 0)
                                              + len(np.unique(keys[hot])))
                    hits = np.where(hot, 0, hits)
                for p, at in _candidates(top, in_b.start[probe], hits):
                    x = a_sorted[p] ^ b_sorted[at]
                    close = np.flatnonzero(np.bitwise_count(x) <= max_distance)
                    i, j, x = in_a.order[p[close]], in_b.order[at[close]], x[close]
                    # Found here first? Else an earlier chunk found it, unless that chunk's
                    # bucket was skipped for this row.
                    earlier = np.zeros(len(x), bool)
                    for w_e, s_e in zip(widths[:chunk], shifts[:chunk], strict=True):
                        bits = (x >> np.uint64(s_e)) & np.uint64((1 << w_e) - 1)
                        earlier |= np.bitwise_count(bits) <= radius
                    keep = (~earlier | hot_before[i]) & ((i < j) if upper else True)
                    found.append(i[keep].astype(np.int64) * len(b) + j[keep])
        hot_before |= hot_here
    if not found:
        return np.empty((0, 2), np.int64)
    codes = np.concatenate(found)
    codes = sorted_unique(codes) if hot_before.any() else np.sort(codes)
    return np.stack([codes // len(b), codes % len(b)], axis=1)


class _Buckets(NamedTuple):
    order: np.ndarray  # rows by chunk value
    start: np.ndarray  # per chunk value: its first position in ``order``
    size: np.ndarray  # per chunk value: how many rows hold it


def _buckets(hashes: np.ndarray, width: int, shift: int) -> tuple[np.ndarray, _Buckets]:
    """One chunk of each hash (``width`` bits from bit ``shift``) and its buckets."""
    index = np.int32 if len(hashes) < 2**31 else np.int64
    keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int32)
    size = np.bincount(keys, minlength=1 << width).astype(index)
    order = np.argsort(keys, kind="stable").astype(index)
    return keys, _Buckets(order, (np.cumsum(size) - size).astype(index), size)


def _candidates(top: int, starts: np.ndarray, hits: np.ndarray):
    """Candidate pairs of a block of rows (row ``top + k`` has ``hits[k]`` candidates from
    position ``starts[k]`` on) as (row, position) arrays of at most _CANDIDATES pairs."""
    held = np.flatnonzero(hits)
    ends = np.cumsum(hits[held], dtype=np.int64)
    first = 0
    while first < len(held):
        last = max(first + 1, int(np.searchsorted(
            ends, (ends[first - 1] if first else 0) + _CANDIDATES, side="right")))
        part = held[first:last]
        first = last
        n = hits[part]
        rows = np.repeat(part + top, n)
        offset = np.arange(len(rows), dtype=n.dtype) - np.repeat(np.cumsum(n) - n, n)
        yield rows, np.repeat(starts[part], n) + offset


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting in place: NumPy's own hashes plain integers, which is
    many times slower once the array outgrows the cache (tens of millions of pair codes)."""
    values.sort()
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def hex_hashes(column: pd.Series) -> np.ndarray:
    """Hashes written as 16 hex digits, as uint64, parsed in one pass (no Python int each).

    When the column is Arrow text of hex digits only, its character buffer is
    already the digits back to back and is decoded without a Python string each."""
    text = pa.array(column, type=pa.large_string()) if len(column) else None
    if text is not None and text.null_count == 0:
        offsets = np.frombuffer(text.buffers()[1], np.int64)[text.offset:text.offset + len(text) + 1]
        if (np.diff(offsets) == 16).all():
            digits = text.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]
            return np.frombuffer(bytes.fromhex(digits.decode("ascii")), ">u8").astype(np.uint64)
    return np.frombuffer(bytes.fromhex("".join(column.astype(str))), ">u8").astype(np.uint64)


def _families(n: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected families of ``n`` photos and each member's orientation within its family.

    ``edges`` are rows ``[i, j, r]``: photo ``i`` turned by ``r`` degrees
    (counter-clockwise) looks like photo ``j``. Returns the family root of
    every photo (its family's first row) and ``turn[i]``, the rotation that
    brings ``i`` to the orientation of its root (rotations compose by adding
    angles). A breadth-first search from every root at once (scipy), then the
    turns are carried down the tree a level at a time.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    i, j, r = (edges[:, k].astype(np.int64) for k in range(3)) if len(edges) else (
        np.empty(0, np.int64),) * 3
    # Boolean links: a pair found twice stays one link, and takes a byte, not eight.
    graph = coo_matrix((np.ones(len(i), bool), (i, j)), shape=(n, n)).tocsr()
    _, label = connected_components(graph, directed=False)
    root = np.full(label.max() + 1 if n else 0, n, np.int64)
    np.minimum.at(root, label, np.arange(n))
    root = root[label]
    # One search from a node linked to every root reaches each family from its root.
    hub = sorted_unique(root.copy())
    tree = coo_matrix((np.ones(len(i) + len(hub), bool),
                       (np.concatenate([i, np.full(len(hub), n)]), np.concatenate([j, hub]))),
                      shape=(n + 1, n + 1)).tocsr()
    _, parent = breadth_first_order(tree, n, directed=False, return_predecessors=True)
    parent = parent[:n]
    # The rotation along each tree edge (child -> parent): turning the child by it gives the
    # parent. An edge stored as (i, j, r) read backwards turns by -r. Where several edges
    # join a child to its parent, the first stored one (forward before backward) counts.
    forward, backward = np.flatnonzero(parent[i] == j), np.flatnonzero(parent[j] == i)
    child = np.concatenate([i[forward], j[backward]])
    rotation = np.concatenate([r[forward], (360 - r[backward]) % 360])
    order = np.lexsort((np.concatenate([forward, len(i) + backward]), child))
    first = order[np.r_[True, child[order][1:] != child[order][:-1]]] if len(order) else order
    step_of = np.zeros(n, np.int64)
    step_of[child[first]] = rotation[first]
    turn = np.zeros(n, np.int64)
    todo = np.flatnonzero(root != np.arange(n))
    done = root == np.arange(n)
    step = step_of[todo]
    while len(todo):
        ready = done[parent[todo]]
        turn[todo[ready]] = (step[ready] + turn[parent[todo[ready]]]) % 360
        done[todo[ready]] = True
        todo, step = todo[~ready], step[~ready]
    return root, turn


def _upright_turn(members: np.ndarray, turn: np.ndarray, clip_turn: np.ndarray | None) -> int:
    """The family orientation taken as upright: the one most members share; a tie
    goes to the orientation the CLIP check confirms most often, then to the first row's."""
    angles, counts = np.unique(turn[members], return_counts=True)
    tied = angles[counts == counts.max()]
    if len(tied) > 1 and clip_turn is not None:
        # Candidate upright orientation a means member i needs (turn[i] - a) to be upright.
        votes = [int(np.sum(clip_turn[members] == (turn[members] - a) % 360)) for a in tied]
        tied = tied[np.array(votes) == max(votes)]
    first = turn[members.min()]
    return int(first) if first in tied else int(tied[0])


def duplicates(photos: pd.DataFrame, max_distance: int,
               rotation_threshold: float = 0.5, skipped: dict | None = None) -> pd.DataFrame:
    """Duplicate photos, grouped into families of copies of one picture.

    Members are linked when their bytes are the same, their upright perceptual
    hashes are within ``max_distance`` bits, or one turned by 90/180/270
    degrees matches the other. Within a family the orientation most members
    share is upright (ties: the CLIP check's confident votes, then the first
    row). Each member's ``kind`` is ``rotated`` (``rotation`` says how far to
    turn it counter-clockwise to be upright), else ``exact`` (same bytes as
    another member) or ``near`` (an upright copy that differs in its bytes).
    """
    cols = ["key", "kind", "group", "rotation"]
    ok = photos[photos["status"] == PhotoStatus.OK].reset_index(drop=True)
    if ok.empty:
        return pd.DataFrame(columns=cols)
    hashes = {r: hex_hashes(ok[f"phash_{r}"]) for r in ROTATIONS}
    pid = ok["photo_id"].to_numpy()
    n = len(ok)
    upright = hash_pairs(hashes[0], hashes[0], max_distance, skipped=skipped, upper=True)
    edges = [np.column_stack([upright, np.zeros(len(upright), np.int64)])]
    linked = upright[:, 0] * n + upright[:, 1]  # sorted: hash_pairs returns sorted pairs
    for r in ROTATIONS[1:]:
        turned = hash_pairs(hashes[r], hashes[0], max_distance, skipped=skipped)
        pair = np.sort(turned, axis=1)
        known, _ = sorted_lookup(linked, pair[:, 0] * n + pair[:, 1])
        keep = (turned[:, 0] != turned[:, 1]) & ~known
        edges.append(np.column_stack([turned[keep], np.full(int(keep.sum()), r)]))
    # Photos with the same bytes: each linked to the first row holding them.
    rows = np.arange(n)
    first_row = pd.Series(rows).groupby(pid).transform("min").to_numpy()
    same = np.flatnonzero(first_row != rows)
    edges.append(np.column_stack([first_row[same], same, np.zeros(len(same), np.int64)]))
    root, turn = _families(n, np.concatenate(edges))
    clip_turn = None
    if "rotation_needed" in ok and ok["rotation_needed"].notna().any():
        confident = ok["rotation_confidence"].fillna(0).to_numpy() >= rotation_threshold
        clip_turn = np.where(confident, ok["rotation_needed"].fillna(-1).to_numpy(), -1)
    size = np.bincount(root, minlength=n)
    members = np.flatnonzero(size[root] > 1)  # in row order
    family_upright = _upright_turns(members, root, turn, clip_turn)
    rotation = (turn[members] - family_upright) % 360
    exact = ok["photo_id"].duplicated(keep=False).to_numpy()[members]
    return pd.DataFrame({
        "key": ok["key"].to_numpy()[members],
        "kind": np.where(rotation != 0, "rotated", np.where(exact, "exact", "near")),
        "group": pid[root[members]], "rotation": rotation.astype(int)}, columns=cols)


def _upright_turns(members: np.ndarray, root: np.ndarray, turn: np.ndarray,
                   clip_turn: np.ndarray | None) -> np.ndarray:
    """Each member's family orientation taken as upright (see :func:`_upright_turn`):
    counted for every family at once; only families whose count ties go one by one."""
    families, index = np.unique(root[members], return_inverse=True)
    counts = np.zeros((len(families), 4), np.int64)
    np.add.at(counts, (index, turn[members] // 90), 1)
    best = counts.argmax(axis=1) * 90
    tied = np.flatnonzero((counts == counts.max(axis=1, keepdims=True)).sum(axis=1) > 1)
    if len(tied):
        by_family = pd.Series(members).groupby(index).indices
        for f in tied:
            best[f] = _upright_turn(members[by_family[f]], turn, clip_turn)
    return best[index]
