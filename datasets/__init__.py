"""Built-in dataset loaders, installed as ``valbench.datasets``."""
