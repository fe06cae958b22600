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
    merges: list[tuple[str, str]] = []
    known = set(vocab)
    for word in sorted({w.lower() for w in words if w.strip()}):
        # Merge left to right: "s n" -> "sn", "sn o" -> "sno", "sno w</w>" -> "snow</w>".
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            merges.append((merged, piece))
            merged += piece
            if merged not in known:
                known.add(merged)
                vocab.append(merged)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(vocab)},
        merges=merges,
        model_max_length=model_max_length,
    )
