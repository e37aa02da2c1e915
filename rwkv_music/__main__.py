"""``python -m rwkv_music …`` runs the ``rwkv-music`` command line."""

from rwkv_music.cli.main import main

if __name__ == "__main__":
    main(prog_name="rwkv-music")
