"""The benchmark: the field's protocol on the standard prompt sets, `python -m specdistill_jax.bench`.

    python -m specdistill_jax.bench --target DIR --draft DIR --suite mt_bench,humaneval \
        [--gammas 1,2,3,4] [--trees 4:2:8] [--temperatures 0,1] [--limit N] [--dtype bfloat16]

protocol.py (batch 1, AR and SD of a prompt back to back, per-prompt records and their
summary), suite.py (prompt sets, cost model, peers: one run), peers.py (transformers,
llama.cpp), report.py (markdown, JSON rows, PNG), __main__.py (the command line).
Experiment scripts call `run_suite` / `main`; every results file it writes starts with the
command that rewrites it.
"""

from specdistill_jax.bench.protocol import Method, Record, decode_set, parse_methods, summarise
from specdistill_jax.bench.suite import SetResult, SuiteResult, run_suite

__all__ = ["Method", "Record", "decode_set", "parse_methods", "summarise", "SetResult", "SuiteResult",
           "run_suite"]
