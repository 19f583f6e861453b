"""Mask operations: threshold, minimum area, dilate, feather.

A text-prompted segmenter gives a probability map; these steps turn it into
the binary mask a user sees (saved as PNG) and the soft mask used to blend an
edit into the photo. Where the soft mask is 0 the photo's pixels are kept
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class MaskOps:
    threshold: float = 0.4
    min_area: float = 0.002  # fraction of the photo; smaller blobs are noise
    dilate: int = 6  # pixels
    feather: int = 4  # pixels of soft edge

    def apply(self, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(binary mask, soft mask in 0..1), or None when nothing large enough remains."""
        binary = prob >= self.threshold
        labels, n = ndimage.label(binary)
        if n == 0:
            return None
        sizes = ndimage.sum(binary, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= self.min_area * binary.size) + 1
        if len(keep) == 0:
            return None
        binary = np.isin(labels, keep)
        if self.dilate > 0:
            binary = ndimage.binary_dilation(binary, iterations=self.dilate)
        soft = binary.astype(np.float32)
        if self.feather > 0:
            soft = ndimage.gaussian_filter(soft, sigma=self.feather / 2)
            soft = np.maximum(soft, binary * 0.5)  # the mask itself is always at least half-edited
            soft[soft < 1 / 255] = 0.0  # beyond the feather, exactly the input
        return binary, np.clip(soft, 0, 1)
