"""One photo in, one verdict out: the named stages, decoding, metadata, checks, near-duplicates, credits."""
