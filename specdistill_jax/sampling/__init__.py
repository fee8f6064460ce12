"""Decoding: autoregressive `generate`, `speculative_generate`, and multi-drafter routing."""

from specdistill_jax.sampling.acceptance import LENIENCE_KINDS
from specdistill_jax.sampling.autoregressive import Generation, generate, generate_batch
from specdistill_jax.sampling.prompt_lookup import PromptLookup, prompt_lookup
from specdistill_jax.sampling.routing import average_params, routed_speculative_generate
from specdistill_jax.sampling.speculative import speculative_generate
from specdistill_jax.sampling.tree import TreeSpec

__all__ = ["generate", "generate_batch", "Generation", "speculative_generate",
           "routed_speculative_generate", "average_params", "LENIENCE_KINDS", "TreeSpec",
           "prompt_lookup", "PromptLookup"]
