"""Word and character metrics as pure functions and a fastai metric (metrics), and the evaluation loop over every
process's share of a test set with its results table (loop)."""
