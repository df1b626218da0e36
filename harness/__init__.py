"""fusion-harness: knowledge fusion of LLMs (ProFuser and baselines), trained and evaluated through one harness."""

__version__ = "0.1.0"
