"""``python -m rwkv_music.train`` — same as ``rwkv-music train`` (handy before the CLI is installed)."""

from rwkv_music.train.command import train

if __name__ == "__main__":
    train()
