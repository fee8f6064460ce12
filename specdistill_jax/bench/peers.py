"""Peers measured in the benchmark's run, on the same prompts: transformers and llama.cpp.

* `transformers_plain`: transformers' plain greedy `generate` of the target (PyTorch CPU,
  B=1, the fp32 export of the same weights); its ids are compared with ours.

* `transformers_assisted`: transformers' `generate(assistant_model=...)` (PyTorch, CPU,
  greedy, B=1, a constant `gamma` drafts per round) with the same weights exported by
  `save_hf`; its ids are compared with ours. A draft transformers cannot load as a causal
  LM (an EAGLE-3 head in speculators' format) is reported as not applicable, with the reason.
  Needs torch (requirements-test.txt); without it the row says so.
* `llama_cpp_plain`: llama.cpp's plain greedy decoding of a GGUF file (by default the one the
  target was converted from, `import_gguf.json`) through llama-cpp-python, when `llama_cpp`
  imports (an optional extra: `pip install llama-cpp-python==0.3.36`, built from its sdist;
  on this project's CPUs with CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON
  -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF": the native build segfaults
  in its AMX path). Prefill is included in its time, as in ours.
* `llama_cpp_lookup`: the same, with llama-cpp-python's own prompt lookup decoding
  (`LlamaPromptLookupDecoding`: n-grams of up to 3 tokens, `num_pred_tokens` drafts a round).
Each returns a dict: system, tokens_per_second (or None) and a note.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Optional, Sequence


def transformers_plain(target, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       our_greedy: Sequence[Sequence[int]]) -> dict:
  return transformers_assisted(target, None, prompts, max_new_tokens, 0, our_greedy)


def transformers_assisted(target, draft, prompts: Sequence[Sequence[int]], max_new_tokens: int, gamma: int,
                          our_greedy: Sequence[Sequence[int]]) -> dict:
  """draft None: plain decoding of the target (gamma unused)."""
  system = (f"transformers assisted generation (PyTorch CPU), greedy, gamma={gamma}" if draft is not None else
            "transformers plain decoding (PyTorch CPU), greedy")
  try:
    import torch
    import transformers
  except ImportError:
    return dict(system=system, tokens_per_second=None, note="skipped: torch is not installed (requirements-test.txt)")
  from specdistill_jax import models
  torch.set_num_threads(os.cpu_count() or 1)
  eos = list(target.config.eos_token_ids) or None
  kw = dict(do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=eos,
            pad_token_id=target.config.pad_token_id)
  # a drafter with no weights names transformers' own equivalent (prompt lookup decoding)
  own = getattr(draft, "transformers_generate_kwargs", None)
  with tempfile.TemporaryDirectory() as tmp:
    models.save_hf(target, os.path.join(tmp, "t"))
    pt_t = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(tmp, "t")).eval()
    if own is not None:
      system = f"transformers prompt lookup decoding (PyTorch CPU), greedy, {gamma} tokens"
      kw.update(own(gamma))
    elif draft is not None:
      models.save_hf(draft, os.path.join(tmp, "d"))
      try:
        kw["assistant_model"] = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(tmp, "d")).eval()
      except Exception as e:  # noqa: BLE001 - whatever transformers says about this draft's format
        return dict(system=system, tokens_per_second=None,
                    note=f"not applicable: transformers cannot load this draft as a causal LM "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:100]})")
      kw.update(num_assistant_tokens=gamma, num_assistant_tokens_schedule="constant",
                assistant_confidence_threshold=0.0)
  same, tokens, wall = 0, 0, 0.0
  with torch.no_grad():
    pt_t.generate(torch.tensor([list(prompts[0])]), **kw)  # warm-up
    for p, mine in zip(prompts, our_greedy):
      t0 = time.perf_counter()
      res = pt_t.generate(torch.tensor([list(p)]), **kw)
      wall += time.perf_counter() - t0
      got = res[0, len(p):].tolist()
      tokens += len(got)
      same += got == list(mine)
  return dict(system=system, tokens_per_second=tokens / wall,
              note=f"ids identical to our greedy AR on {same}/{len(prompts)} prompts")


def source_gguf(target_dir: str) -> Optional[str]:
  """The GGUF file a target directory was converted from (models/import_gguf.py's marker)."""
  marker = os.path.join(target_dir, "import_gguf.json")
  if not os.path.exists(marker):
    return None
  with open(marker) as fh:
    return json.load(fh).get("source", {}).get("gguf")


def llama_cpp_plain(gguf_path: Optional[str], prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    eos_ids: Sequence[int], lookup_tokens: Optional[int] = None) -> dict:
  """lookup_tokens: None (plain decoding) or the drafts per round of llama.cpp's prompt lookup."""
  system = ("llama.cpp plain decoding (llama-cpp-python), greedy" if lookup_tokens is None else
            f"llama.cpp prompt lookup decoding (llama-cpp-python), greedy, {lookup_tokens} tokens")
  try:
    import llama_cpp
  except ImportError:
    return dict(system=system, tokens_per_second=None,
                note="skipped: llama_cpp is not importable (optional: pip install llama-cpp-python==0.3.36, "
                     "see specdistill_jax/bench/peers.py for this CPU's build flags)")
  if not gguf_path or not os.path.exists(gguf_path):
    return dict(system=system, tokens_per_second=None, note="skipped: no GGUF file for this target (--gguf)")
  # room for a last round's drafts past the token budget (llama-cpp-python writes them into its
  # context before checking it: a context sized to the budget alone fails with a broadcast error)
  width = max(map(len, prompts)) + max_new_tokens + 2 * (lookup_tokens or 0) + 8
  extra = {}
  if lookup_tokens is not None:
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    extra["draft_model"] = LlamaPromptLookupDecoding(max_ngram_size=3, num_pred_tokens=lookup_tokens)
  llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=width, n_threads=os.cpu_count() or 1, verbose=False,
                        logits_all=False, **extra)
  stop = set(eos_ids)

  def one(p) -> int:
    llm.reset()
    n = 0
    for tok in llm.generate(list(p), top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
      n += 1
      if tok in stop or n >= max_new_tokens:
        break
    return n

  one(prompts[0])  # warm-up
  tokens, wall = 0, 0.0
  for p in prompts:
    t0 = time.perf_counter()
    tokens += one(p)
    wall += time.perf_counter() - t0
  return dict(system=system, tokens_per_second=tokens / wall,
              note=f"{os.path.basename(gguf_path)}, {len(prompts)} prompts, {tokens} tokens")
