"""Offline data layer: corpus, tokenizers, batching and synthetic tasks. Nothing is downloaded.

Corpus (`corpus.py`)
  Default: every `*.py` file of the running interpreter: the standard library
  (`sysconfig.get_paths()["stdlib"]`, rel_path "stdlib/...", its site-packages and the
  build-specific `_sysconfigdata*` / `config-*` files left out) plus the installed packages
  (purelib/platlib, rel_path "site/..."), sorted by rel_path.
  User: `list_files(path)` with one file, or a folder of `.txt`/`.md`/`.py`/suffix-less files.

Split (`split_files`, held-out fraction 5% by default)
  The candidates are the stdlib files when there are any, else all files; the ceil(5%) of them
  with the smallest sha256(salt + rel_path) are held out. So for the default corpus the eval set
  is the same on every machine with the same Python version, whatever packages are installed,
  and it never depends on file order. A single-file corpus is split by bytes instead: its last
  5% (cut at a UTF-8 character boundary) is held out.

Tokens (`load_tokens`)
  Each file's text (UTF-8, bad bytes -> U+FFFD) is encoded separately and joined with the ids
  of "\\n\\n"; optional `.npy` cache keyed by file list, sizes, mtimes and tokenizer.
  Tokenizers: `ByteTokenizer` (259 ids; BOS=256, EOS=257, PAD=258) and `BPETokenizer`
  (byte-level BPE trained with HuggingFace `tokenizers`; <bos>=0, <eos>=1, <pad>=2).

Batches (`batching.py`): int32 [b, seq_len + 1] with BOS in column 0;
  inputs = out[:, :-1], targets = out[:, 1:]. `TrainStream.batch_at(step)` is a pure function
  of (seed, step), so resumed runs are bit-identical.

Tasks: passkey retrieval (`passkey.py`, Landmark Attention), the RULER-style suite (`ruler.py`:
  passkey, multi-key / multi-value / multi-query needles, variable tracking, common-word
  extraction; exact scoring; also training rows) and Bigram-Backcopy (`bigram_backcopy.py`,
  Guo et al. 2024).
"""

from lcache.data.batching import TrainStream, eval_batches, sample_batch
from lcache.data.bigram_backcopy import BigramBackcopy
from lcache.data.corpus import (
    CorpusFile,
    CorpusStats,
    corpus_stats,
    default_roots,
    list_files,
    load_tokens,
    read_texts,
    split_files,
)
from lcache.data.passkey import (
    PasskeyExample,
    make_passkey,
    sample_passkeys,
    score_passkey,
)
from lcache.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    load_tokenizer,
    make_tokenizer,
)

__all__ = [
    "BPETokenizer",
    "BigramBackcopy",
    "ByteTokenizer",
    "CorpusFile",
    "CorpusStats",
    "PasskeyExample",
    "Tokenizer",
    "TrainStream",
    "corpus_stats",
    "default_roots",
    "eval_batches",
    "list_files",
    "load_tokenizer",
    "load_tokens",
    "make_passkey",
    "make_tokenizer",
    "read_texts",
    "sample_batch",
    "sample_passkeys",
    "score_passkey",
    "split_files",
]
