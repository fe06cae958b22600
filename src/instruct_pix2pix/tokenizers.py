"""Build byte-level BPE tokenizers from a word list, in code (no hub).

The tests use them for tiny models, and the small world for its own text encoder (CLIP's kind) and
its language model (GPT-2's kind). Every listed word becomes one token; any other text still
tokenizes, falling back to bytes.
"""

from collections.abc import Iterable

from transformers import CLIPTokenizer, GPT2TokenizerFast


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE (GPT-2, CLIP) starts from, in the
    order their vocabularies list them (printable bytes first; the others are `chr(256 + k)`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def _learn_merges(words: list[list[str]], vocab: list[str]) -> list[tuple[str, str]]:
    """Merges that make each word (a list of symbols) one symbol; new symbols are appended to `vocab`.

    Learnt the way BPE training does (most frequent pair first, everywhere at once): replaying
    merges by rank, as a tokenizer does, then rebuilds each word whole; merges chained per word
    would collide ("ma" from "make" would break "small")."""
    merges: list[tuple[str, str]] = []
    known = set(vocab)
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in words:
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
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


def build_clip_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary is the byte alphabet plus one token per word (lower case)."""
    alphabet = _bytes_to_unicode()
    vocab = alphabet + [symbol + "</w>" for symbol in alphabet]
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in sorted({w.lower() for w in words if w.strip()})]
    merges = _learn_merges(words, vocab)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(vocab)},
        merges=merges,
        model_max_length=model_max_length,
    )


def build_gpt2_tokenizer(words: Iterable[str], model_max_length: int = 1024) -> GPT2TokenizerFast:
    """A GPT-2 tokenizer whose vocabulary is the byte alphabet plus one token per word, both after a
    space ("Ġred") and at the start of a line ("red"); case and whitespace are kept exactly.
    `<|endoftext|>` is its beginning, end and padding token."""
    alphabet = _bytes_to_unicode()
    space = chr(256 + ord(" "))  # "Ġ": the space is the 33rd byte that is not printable
    vocab = list(alphabet)
    unique = sorted({w for w in words if w.strip()})
    merges = _learn_merges([list(w) for w in unique] + [[space, *w] for w in unique], vocab)
    vocab.append("<|endoftext|>")
    return GPT2TokenizerFast(
        vocab={token: index for index, token in enumerate(vocab)},
        merges=merges,
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
