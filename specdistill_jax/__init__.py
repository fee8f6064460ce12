"""specdistill_jax: draft models for speculative decoding, trained by knowledge distillation.

Subpackages: models (NNX decoder + HF interop), sampling (autoregressive and
speculative decoding), distill (divergences, data sources, training), data
(TFDS corpora, tokenizer, pipeline). See README.md and ARCHITECTURE in the docs.
"""

__version__ = "0.1.0"
