"""Console scripts and the LightningCLI: the only place that sees models and data together."""
