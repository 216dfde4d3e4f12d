"""Training models: the built-in MNIST models, the 2-D few-step flows, reflow couplings."""
