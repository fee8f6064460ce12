"""Data: TFDS builders for the bundled corpora, tokenizer + chat format, batch pipeline, prompt sets.

Importing this package registers the builders `sharegpt_chat`, `sharegpt_code`,
`python_code`, `function_calling` and `math_word_problems` with TFDS (configs `full` and `small`).
Build them with `python -m specdistill_jax.data.prepare --data_dir=DIR`.
"""

from specdistill_jax.data.builder import DataSourceError, split_of
from specdistill_jax.data.corpora import BUNDLED, FIELDS, TextSource, default_data_dir, load, load_conversations
from specdistill_jax.data.function_calling import FunctionCalling
from specdistill_jax.data.math_word_problems import MathWordProblems
from specdistill_jax.data.pipeline import BATCH_FIELDS, BatchPipeline
from specdistill_jax.data.prompts import curated_documents, historical_queries, synthetic_prompts
from specdistill_jax.data.python_code import PythonCode
from specdistill_jax.data.sharegpt import SharegptChat, SharegptCode
from specdistill_jax.data.tokenizer import ChatFormat, train_bpe

__all__ = ["DataSourceError", "split_of", "BUNDLED", "FIELDS", "TextSource", "default_data_dir", "load_conversations",
           "load", "BATCH_FIELDS", "BatchPipeline", "curated_documents", "historical_queries",
           "synthetic_prompts", "ChatFormat", "train_bpe", "SharegptChat", "SharegptCode",
           "PythonCode", "FunctionCalling", "MathWordProblems"]
