"""A CLIP tokenizer available offline.

Hub CLIP tokenizers (vocab.json + merges.txt) cannot be fetched on a machine
without the internet, but open_clip ships the same BPE. This builds a
transformers ``CLIPTokenizer`` from it, for models built at random weights
(text encoders of diffusion pipelines, CLIPSeg). Real checkpoints load their
own tokenizer files.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

SPECIAL = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, str]:
    """open_clip's BPE as the text of a hub tokenizer's vocab.json and merges.txt."""
    from open_clip.tokenizer import SimpleTokenizer

    st = SimpleTokenizer()
    vocab = {SPECIAL.get(k, k): v for k, v in st.encoder.items()}
    merges = sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])
    return json.dumps(vocab), "#version: 0.2\n" + "".join(f"{a} {b}\n" for (a, b), _ in merges)


def offline_clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab_text, merges_text = _vocabulary()
    # The tokenizer reads its files once, when it is built: the folder can go.
    with tempfile.TemporaryDirectory(prefix="kadr-clip-bpe-") as folder:
        vocab = os.path.join(folder, "vocab.json")
        merges = os.path.join(folder, "merges.txt")
        Path(vocab).write_text(vocab_text, encoding="utf-8")
        Path(merges).write_text(merges_text, encoding="utf-8")
        tok = CLIPTokenizer(vocab, merges, pad_token="<|endoftext|>")
    tok.model_max_length = max_length
    return tok
