"""Tiny tokenizers built entirely in code (no hub access), for the pipelines of :mod:`anysize.builders`.

Both are the real ``transformers`` classes the Stable Diffusion / SDXL / SD3 / FLUX pipelines use
(``CLIPTokenizer`` and ``T5Tokenizer``, which transformers 5 also exposes as ``T5TokenizerFast``), so
they save with ``save_pretrained`` and reload with ``from_pretrained`` like the originals. Only the
vocabulary is small:

* CLIP: byte-level BPE. The 256 byte symbols and their 256 end-of-word (``</w>``) variants, a few
  hundred merges learnt (deterministically, in milliseconds) from a built-in word list, then
  ``<|startoftext|>`` and ``<|endoftext|>`` as the last two ids, exactly like OpenAI's CLIP vocabulary.
  Every byte sequence is representable, so any prompt tokenizes without unknown tokens.
* T5: SentencePiece-style Unigram with ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then whole words,
  ``▁``-prefixed characters and bare characters; characters outside the table become ``<unk>``.
"""

from __future__ import annotations

import functools
import heapq
from collections import Counter, defaultdict

__all__ = [
    "CLIP_MAX_LENGTH",
    "T5_MAX_LENGTH",
    "WORDS",
    "tiny_clip_tokenizer",
    "tiny_t5_tokenizer",
]

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

#: Small English vocabulary typical of text-to-image prompts (used to learn merges / word pieces).
WORDS: tuple[str, ...] = tuple(
    """
    a an the of on in at with and or to from by for over under near behind above below between
    is are this that it its his her their my your our one two three four five many some
    red green blue yellow orange purple pink black white gray grey brown golden silver dark light
    bright colorful pale vivid
    triangle square circle rectangle star heart line dot shape pattern stripes grid checkerboard
    background foreground center left right top bottom corner edge border frame
    cat dog bird horse fish cow lion tiger bear fox rabbit owl dragon
    man woman person girl boy child people face portrait hand eyes hair smile
    tree trees flower flowers forest grass garden field mountain mountains hill river lake sea ocean
    beach sky cloud clouds sun moon night day sunset sunrise rain snow winter summer autumn spring
    city street house building castle tower bridge road car train boat ship window door room
    table chair book cup bowl apple fruit food bread cake
    photo photograph painting drawing illustration sketch render image picture art style oil
    watercolor digital realistic photorealistic detailed highly quality best high resolution
    sharp focus cinematic lighting soft hard shadow shadows studio 4k 8k hd ultra masterpiece
    beautiful small large big tiny huge tall long short old new young little
    landscape panorama wide view close up closeup macro scene still life abstract minimalist
    sitting standing walking running flying wearing holding looking
    astronaut robot space planet galaxy stars fantasy magic ancient modern futuristic
    wooden stone metal glass water fire ice
    """.split()
)

# ----------------------------------------------------------------------------------------------
# CLIP: byte-level BPE
# ----------------------------------------------------------------------------------------------


def _byte_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable-character table of byte-level BPE (GPT-2 / CLIP).

    Printable Latin-1 bytes map to themselves; the remaining bytes (controls, space, ...) are
    shifted to code points 256, 257, ... in increasing byte order.
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table: dict[int, str] = {}
    shifted = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _learn_merges(words: tuple[str, ...], num_merges: int, suffix: str = "</w>") -> list[tuple[str, str]]:
    """Plain BPE training over the distinct ``words`` (each counted once).

    Incremental pair counts plus a lazy heap keep this at a few milliseconds; ties between equally
    frequent pairs are broken by the pair itself, so the result is fully deterministic.
    """
    b2u = _byte_to_unicode()
    seqs: list[list[str]] = []
    for w in dict.fromkeys(words):
        symbols = [b2u[b] for b in w.encode("utf-8")]
        symbols[-1] += suffix
        seqs.append(symbols)

    counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, symbols in enumerate(seqs):
        for pair in zip(symbols, symbols[1:]):
            counts[pair] += 1
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        neg, best = heapq.heappop(heap)
        if counts.get(best, 0) != -neg or neg == 0:
            continue  # stale heap entry
        merges.append(best)
        joined = best[0] + best[1]
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(best, ())):
            old = seqs[i]
            new: list[str] = []
            j = 0
            while j < len(old):
                if j + 1 < len(old) and (old[j], old[j + 1]) == best:
                    new.append(joined)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            for pair in zip(old, old[1:]):
                counts[pair] -= 1
                touched.add(pair)
            for pair in zip(new, new[1:]):
                counts[pair] += 1
                where[pair].add(i)
                touched.add(pair)
            seqs[i] = new
        for pair in sorted(touched):
            if counts[pair] > 0:
                heapq.heappush(heap, (-counts[pair], pair))
    return merges


@functools.lru_cache(maxsize=None)
def _clip_vocab_and_merges(num_merges: int) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    base = list(_byte_to_unicode().values())
    vocab_list = base + [s + "</w>" for s in base]
    merges = _learn_merges(WORDS, num_merges)
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            vocab_list.append(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = tuple((tok, i) for i, tok in enumerate(vocab_list))
    return vocab, tuple(merges)


def tiny_clip_tokenizer(*, pad_token: str = "<|endoftext|>", num_merges: int = 400):
    """A tiny but real ``transformers.CLIPTokenizer`` (byte-level BPE, ``model_max_length`` 77).

    ``pad_token`` follows the checkpoint being imitated: ``"<|endoftext|>"`` for OpenAI CLIP-L
    (SD 1.x, SDXL/SD3 first encoder), ``"!"`` for the OpenCLIP encoders (SD 2.x, SDXL/SD3 second).
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges(num_merges)
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),  # (left, right) pairs; the backend rejects "left right" strings
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token=pad_token,
        model_max_length=CLIP_MAX_LENGTH,
    )


# ----------------------------------------------------------------------------------------------
# T5: Unigram
# ----------------------------------------------------------------------------------------------

_T5_CHARS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    ".,;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~`"
)


@functools.lru_cache(maxsize=None)
def _t5_vocab() -> tuple[tuple[str, float], ...]:
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    seen = {p for p, _ in vocab}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))

    for w in WORDS:  # whole words are much likelier than their spelling
        add("▁" + w, -6.0 - 0.01 * len(vocab))
    for c in _T5_CHARS:
        add("▁" + c, -10.0)
    for c in _T5_CHARS:
        add(c, -11.0)
    return tuple(vocab)


def tiny_t5_tokenizer():
    """A tiny but real ``transformers`` T5 tokenizer (``T5TokenizerFast`` == ``T5Tokenizer`` in v5).

    Unigram model, ``<pad>``=0, ``</s>``=1, ``<unk>``=2, no sentinel ``<extra_id_*>`` tokens,
    ``model_max_length`` 512.
    """
    from transformers import T5TokenizerFast

    return T5TokenizerFast(
        vocab=list(_t5_vocab()),
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=T5_MAX_LENGTH,
    )
