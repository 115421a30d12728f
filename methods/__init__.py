"""Built-in method adapters, installed as ``valbench.methods``."""
