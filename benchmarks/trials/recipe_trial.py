"""The recipe (`make train-default`) run with a trial world setting, before it moves into the world.

    python benchmarks/trials/recipe_trial.py WORK [small=R]

small: the small objects' radius as a share of the side (common.use_small_radius). The stages, their
results under WORK and their resuming are `ip2p world train-default --work WORK`'s; nothing is
packaged. A stage whose result is already under WORK is skipped, so a trial's result copied there
(a VAE trained by vae_trial.py with the same settings) stands in for its stage.
"""

import sys
from pathlib import Path

from common import trial_settings

from instruct_pix2pix.small_world.recipe import run_recipe

trial_settings(sys.argv[2:], {"small"})
run_recipe(Path(sys.argv[1]), package_model=False)
