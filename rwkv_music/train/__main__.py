"""``python -m rwkv_music.train`` — same as ``rwkv-music train`` (handy before the CLI is installed)."""

import logging

from rwkv_music.cli.train import train

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train()
