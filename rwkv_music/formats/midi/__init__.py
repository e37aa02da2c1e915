"""MIDI: the 20,096-word vocabulary, MIDI files <-> token text, and the MIDI constraint."""
