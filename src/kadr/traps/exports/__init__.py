"""The exports of a camera-trap run, one module per format, each a writer fed a camera at a
time by :func:`write_outputs` (:mod:`.write`):

- ``registrations.csv`` / ``.parquet`` and ``photos.*``: :mod:`.write` itself;
- MegaDetector batch JSON: :mod:`.megadetector`;
- Camtrap DP 1.0.2: :mod:`.camtrap_dp`, checked by :mod:`.validate`;
- machine versus reviewers: :mod:`.agreement`.

The HTML report is :mod:`kadr.traps.report`. A new export is a module here with a writer
that takes each camera's photos and registrations, called from :func:`write_outputs`.
"""

from kadr.traps.exports.validate import validate_camtrap_dp
from kadr.traps.exports.write import export_run, outputs_key, write_outputs

__all__ = ["export_run", "outputs_key", "validate_camtrap_dp", "write_outputs"]
