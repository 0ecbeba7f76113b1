"""robustgen-bench: evaluate generative-classifier and test-time-optimisation defenses."""

__version__ = "0.1.0"
