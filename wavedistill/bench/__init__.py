"""Benchmarks behind ``wavedistill bench``: a mixer's training step (train), decoding (decode) and the KD loss
alone (loss), each cell in a subprocess of its own; plotted through one helper (``train.plot_panels``)."""
