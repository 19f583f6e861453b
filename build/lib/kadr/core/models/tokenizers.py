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

SPECIAL = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


@lru_cache(maxsize=1)
def _files() -> tuple[str, str]:
    from open_clip.tokenizer import SimpleTokenizer

    st = SimpleTokenizer()
    folder = tempfile.mkdtemp(prefix="kadr-clip-bpe-")
    vocab = {SPECIAL.get(k, k): v for k, v in st.encoder.items()}
    vocab_path = os.path.join(folder, "vocab.json")
    merges_path = os.path.join(folder, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    merges = sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for (a, b), _ in merges)
    return vocab_path, merges_path


def offline_clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab, merges = _files()
    tok = CLIPTokenizer(vocab, merges, pad_token="<|endoftext|>")
    tok.model_max_length = max_length
    return tok
