"""Trial: what the text stage keeps from a world language model. `write_edits` itself (the reference's
filters, 3 retries, the reference's sampling) writes a triple for each of COUNT held-out captions, and
the world's grammar checks every kept one: the share exactly right, and why the rest are wrong. The
filter rejects unchanged copies and samples again, so this is the data a model yields, not its raw
outputs (`ip2p world evaluate-lm`).

    python benchmarks/trials/lm_kept.py MODEL_DIR [COUNT]     (default: the shipped model, 1000)

Measured: README, 'Making data: the text stage' (what the text stage keeps).
"""

import sys
import tempfile
from collections import Counter
from pathlib import Path

from instruct_pix2pix.data.captions import Caption
from instruct_pix2pix.data.edit_text import write_edits
from instruct_pix2pix.data.language_model import LocalLM
from instruct_pix2pix.data.triples import read_triples
from instruct_pix2pix.small_world.language import DEFAULT_LANGUAGE_MODEL, check_triple, held_out_captions

source = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_LANGUAGE_MODEL
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
with tempfile.TemporaryDirectory() as folder:
    output = Path(folder) / "edits.jsonl"
    captions = [Caption(c) for c in held_out_captions(count)]
    stats = write_edits(captions, output, LocalLM(source, device="cpu"), progress=False)
    kept = read_triples(output)
checks = [check_triple(row) for row in kept]
right = sum(c.right for c in checks)
wrong = Counter(c.reason for c in checks if not c.right)
print(f"{source}: {len(kept)} of {count} captions kept, {right / len(kept):.1%} of them exactly right")
print(f"wrong: {dict(wrong.most_common())}; the run's counts: {stats}")
