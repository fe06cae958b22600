"""Trial: can the scene be read off the text encoder's token states (what the UNet's cross-attention
sees)? A probe of nine learnt cell queries and one global query, one attention layer over the token
states and a small head, is trained to predict each cell (empty, or colour x shape x size) and the
background, night and black and white. Reports the share of held-out scenes read exactly.

    python benchmarks/trials/text_probe.py [MODEL_DIR] [steps] [--train-encoder] [--random] [--instructions]
        [--save=TEXT_ENCODER_DIR]

Captions by default: the scene from its caption (what a text-to-image model needs). With
--instructions: the edited scene from the instruction, each query also told what its cell (or the
global state) holds before the edit (what an editor needs, the input image standing in as exact
knowledge). --train-encoder trains the encoder with the probe (lr 1e-4); --random gives it fresh
weights (what the tokens alone give); --save writes the encoder at the end (transformers folder).
"""

import sys
import time

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from instruct_pix2pix.loading import DEFAULT_MODEL
from instruct_pix2pix.small_world.edits import sample_edits
from instruct_pix2pix.small_world.evaluate import EVALUATION_SPLIT, held_out_scenes
from instruct_pix2pix.small_world.pretrain import scene_pair
from instruct_pix2pix.small_world.scenes import BACKGROUNDS, CELLS, COLOURS, SHAPES, SIZES, caption

args = [a for a in sys.argv[1:] if not a.startswith("--")]
folder = args[0] if args else str(DEFAULT_MODEL)
steps = int(args[1]) if len(args) > 1 else 1500
TRAIN_ENCODER, INSTRUCTIONS = "--train-encoder" in sys.argv, "--instructions" in sys.argv
torch.manual_seed(0)
tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
if "--random" in sys.argv:
    encoder = CLIPTextModel(encoder.config).eval()
LOOKS = [(c, s, z) for c in COLOURS for s in SHAPES for z in SIZES]
GLOBAL = [(b, n, w) for b in BACKGROUNDS for n in (False, True) for w in (False, True)]


def labels(scenes):
    """(cells (N, 9): 0 empty or 1 + look index; global (N,): background x night x black and white)."""
    cells = torch.zeros(len(scenes), 9, dtype=torch.long)
    glob = torch.zeros(len(scenes), dtype=torch.long)
    for i, scene in enumerate(scenes):
        for t in scene.things:
            cells[i, CELLS.index(t.cell)] = 1 + LOOKS.index((t.colour, t.shape, t.size))
        glob[i] = GLOBAL.index((scene.background, scene.night, scene.black_and_white))
    return cells, glob


def items(edits_or_scenes):
    """(texts, scenes before or None, scenes to predict)."""
    if INSTRUCTIONS:
        return [e.instruction for e in edits_or_scenes], [e.before for e in edits_or_scenes], [
            e.after for e in edits_or_scenes]  # fmt: skip
    return [caption(s) for s in edits_or_scenes], None, list(edits_or_scenes)


def states(texts):
    tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.set_grad_enabled(TRAIN_ENCODER and torch.is_grad_enabled()):
        return encoder(tokens.input_ids)[0], tokens.attention_mask.bool()


class Probe(torch.nn.Module):
    def __init__(self, width=128, heads=4):
        super().__init__()
        self.queries = torch.nn.Parameter(torch.randn(10, width) * 0.02)
        self.before_cell = torch.nn.Embedding(65, width)
        self.before_global = torch.nn.Embedding(20, width)
        self.attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.cell_head = torch.nn.Sequential(torch.nn.Linear(2 * width, 256), torch.nn.GELU(), torch.nn.Linear(256, 65))
        self.global_head = torch.nn.Sequential(torch.nn.Linear(2 * width, 256), torch.nn.GELU(),
                                               torch.nn.Linear(256, 20))  # fmt: skip

    def forward(self, hidden, mask, before):
        q = self.queries.expand(hidden.shape[0], -1, -1)
        if before is not None:
            cells, glob = labels(before)
            q = q + torch.cat([self.before_cell(cells), self.before_global(glob)[:, None]], 1)
        out, _ = self.attention(q, hidden, hidden, key_padding_mask=~mask)
        out = torch.cat([out, q], -1)
        return self.cell_head(out[:, :9]), self.global_head(out[:, 9])


probe = Probe()
groups = [{"params": probe.parameters(), "lr": 1e-3}]
if TRAIN_ENCODER:
    groups.append({"params": encoder.parameters(), "lr": 1e-4})
optimizer = torch.optim.AdamW(groups)
if INSTRUCTIONS:
    test_texts, test_before, test = items(list(sample_edits(EVALUATION_SPLIT, 1000)))
else:
    test_texts, test_before, test = items(held_out_scenes(1000))
test_cells, test_glob = labels(test)
start, index = time.time(), 0
for step in range(1, steps + 1):
    if INSTRUCTIONS:
        batch = list(sample_edits("train", 64, start=index))
        index += 64
    else:
        batch = []
        for _ in range(32):
            _, before, after = scene_pair("train", index)
            batch += [before, after]
            index += 1
    texts, before, scenes = items(batch)
    cells, glob = labels(scenes)
    cell_logits, glob_logits = probe(*states(texts), before)
    loss = torch.nn.functional.cross_entropy(cell_logits.reshape(-1, 65), cells.reshape(-1))
    loss = loss + torch.nn.functional.cross_entropy(glob_logits, glob)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 250 == 0 or step == steps:
        with torch.no_grad():
            cell_logits, glob_logits = probe(*states(test_texts), test_before)
            cells_right = (cell_logits.argmax(-1) == test_cells).all(-1)
            glob_right = glob_logits.argmax(-1) == test_glob
            occupied = ((cell_logits.argmax(-1) > 0) == (test_cells > 0)).all(-1)
        print(f"step {step} loss {loss.item():.3f} exact {(cells_right & glob_right).float().mean():.3f} "
              f"cells {cells_right.float().mean():.3f} occupancy {occupied.float().mean():.3f} "
              f"global {glob_right.float().mean():.3f} ({time.time() - start:.0f} s)", flush=True)  # fmt: skip

save = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--save=")), None)
if save:
    encoder.save_pretrained(save)
