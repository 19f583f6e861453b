"""What became of a photo: one status per row of every result store.

A run continues past every failure and reports it; the status says which kind,
and whether a rerun can change it.
"""

from __future__ import annotations

from enum import StrEnum


class PhotoStatus(StrEnum):
    OK = "ok"
    EMPTY_FILE = "empty_file"  # 0 bytes
    TRUNCATED = "truncated"  # the image data ends early
    NOT_AN_IMAGE = "not_an_image"  # no image format recognised
    DECODE_ERROR = "decode_error"  # recognised, but the decoder failed
    TOO_LARGE = "too_large"  # more pixels than --max-pixels (a decompression bomb)
    MISSING = "missing"  # no file at the path
    UNREADABLE = "unreadable"  # permissions, a directory, an I/O error
    PROCESS_ERROR = "process_error"  # the model failed on this photo alone


# Failures that a rerun cannot change (the bytes themselves are bad). Any other
# failure (an I/O error, a file not there yet, a model that ran out of memory) is
# tried again on the next run; ``retry_failed`` tries these as well.
PERMANENT_FAILURES = frozenset({PhotoStatus.EMPTY_FILE, PhotoStatus.TRUNCATED,
                                PhotoStatus.NOT_AN_IMAGE, PhotoStatus.TOO_LARGE,
                                PhotoStatus.DECODE_ERROR})
