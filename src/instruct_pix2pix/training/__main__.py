"""`accelerate launch -m instruct_pix2pix.training CONFIG.yaml [key=value ...]`: the same code as `ip2p train`."""

import sys

from instruct_pix2pix.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
