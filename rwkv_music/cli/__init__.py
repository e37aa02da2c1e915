"""The ``rwkv-music`` command line: thin click commands over the composing API.

Entry points: :func:`rwkv_music.cli.main.main` (``rwkv-music``) and
:func:`rwkv_music.cli.main.generate_midi_main` (``generate-midi``).
"""
