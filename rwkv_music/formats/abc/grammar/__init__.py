"""The incremental ABC state machine behind :class:`~rwkv_music.formats.abc.constraint.AbcConstraint`."""
