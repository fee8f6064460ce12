"""What every command-line entry point shares: quiet library logs and one-line user errors.

`cli.run(main)` replaces `absl.app.run(main)`:
* library INFO logging (orbax, TFDS, absl) is off unless `--verbosity` is given
  (`--verbosity=0` shows INFO); progress bars, results and warnings still print;
* an error the user can fix (a wrong path, a bad prompts file, a value out of
  range, an unreadable checkpoint) prints one line, `error: ...`, and exits 2,
  without a traceback; `--verbose` re-raises it with the traceback.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from specdistill_jax.checkpoint import CheckpointError

flags.DEFINE_bool("verbose", False, "show the full traceback of an error")

# Exceptions that describe something the user gave us; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               CheckpointError, KeyError)

_NOISY_LOGGERS = ("absl", "orbax", "jax", "tensorflow_datasets", "tensorstore", "transformers")


def quiet_logging() -> None:
  """Library logs at WARNING and above, unless --verbosity was passed on the command line."""
  f = flags.FLAGS
  if f.is_parsed() and "verbosity" in f and f["verbosity"].present:
    return
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in _NOISY_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    import transformers
    transformers.logging.set_verbosity_error()
  except ImportError:  # pragma: no cover - transformers is a runtime requirement
    pass


def error_line(e: BaseException) -> str:
  """One line naming the problem: the message with its whitespace collapsed."""
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  return " ".join(str(text).split()) or type(e).__name__


def run(main) -> None:
  """absl's app.run(main) with quiet logs and one-line errors for user mistakes."""

  def wrapped(argv):
    quiet_logging()
    try:
      return main(argv)
    except USER_ERRORS as e:
      if flags.FLAGS.verbose:
        raise
      print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
      sys.exit(2)

  app.run(wrapped)
