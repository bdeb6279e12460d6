"""Research done with the product, each with its configs and logs beside it (see experiments/README.md); nothing in
the product imports from here."""
