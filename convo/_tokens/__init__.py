"""Token counting: exact counts with tiktoken (offline data), images and other media, the encodings registry."""
