"""ABC: the byte-level tokenizer, header checks, the grammar constraint and the validity check."""
