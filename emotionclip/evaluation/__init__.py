"""Linear-probe evaluation on the downstream benchmarks (BoLD, MELD, EMOTIC,
MovieGraphs, LIRIS-ACCEDE): dataset loaders, cached feature extraction,
probes, the paper's metrics and the results table."""
