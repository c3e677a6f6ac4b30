"""noderun: reproduce "Neural Ordinary Differential Equations" (Chen et al., NeurIPS 2018)."""

__version__ = "0.1.0"
