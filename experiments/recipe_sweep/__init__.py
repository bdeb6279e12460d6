"""A CPU recipe that reads: learning-rate, warm-up, batch and augmentation runs of the quarter-width model
(sweep.sh, configs/) and the table of iterations to given accuracies (table.py)."""
