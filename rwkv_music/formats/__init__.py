"""Music formats: ABC (byte level) and the RWKV-4-MIDI text vocabulary.

Each format has its tokenizer, prompt checks, decoding constraint and validity check in its own
package (:mod:`rwkv_music.formats.abc`, :mod:`rwkv_music.formats.midi`).
"""
