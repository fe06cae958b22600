"""Build a CLIP-style BPE tokenizer from a word list, in code (no hub).

The tests use it for tiny models, and the small world uses it for its own text encoder. Every
listed word becomes one token; any other word still tokenizes, falling back to characters.
"""

from collections.abc import Iterable

from transformers import CLIPTokenizer


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE (GPT-2, CLIP) starts from."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def build_clip_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary is the byte alphabet plus one token per word (lower case)."""
    alphabet = _bytes_to_unicode()
    vocab = alphabet + [symbol + "</w>" for symbol in alphabet]
    # Learn merges the way BPE training does (most frequent pair first, everywhere at once) until
    # every word is one symbol. Replaying merges by rank, as the tokenizer does, then rebuilds each
    # word whole; merges chained per word would collide ("ma" from "make" would break "small").
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in sorted({w.lower() for w in words if w.strip()})]
    merges: list[tuple[str, str]] = []
    known = set(vocab)
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in words:
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        if best[0] + best[1] not in known:
            known.add(best[0] + best[1])
            vocab.append(best[0] + best[1])
        for symbols in words:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [best[0] + best[1]]
                i += 1
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(vocab)},
        merges=merges,
        model_max_length=model_max_length,
    )
