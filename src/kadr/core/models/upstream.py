"""Loading the field's packages (megadetector, speciesnet, YOLOv5) quietly.

They print as they load: the device they found, the model's layer summary, a
warning that YOLOv5 still imports ``pkg_resources``. kadr says what it loaded in
its own words (a model's notes), so that talk is kept out of the user's terminal
and shown only when the load fails, where it may say why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_upstream() -> Iterator[None]:
    """Hold back what the code inside prints (stdout, INFO logs, import-time warnings);
    write it to stderr only when that code raises."""
    heard = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(heard):
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated",
                                    category=UserWarning)
            yield
    except BaseException:
        sys.stderr.write(heard.getvalue())
        raise
    finally:
        logging.disable(previous)
