"""`python -m specdistill_jax.train --config=configs/x.py:arg --workdir=DIR [--config.key=value]`.

Trains a draft by distillation from a target, or any model as a plain LM
(loss 'ce'), with the same loop; resumes from DIR/checkpoints when present and
exports DIR/hf (save_hf + tokenizer) at the end. See configs/common.py for
every field.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from specdistill_jax import cli, distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config: configs/x.py[:arg]", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and the exported model", required=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  distributed.initialize()
  from specdistill_jax.distill.train import Trainer

  trainer = Trainer(FLAGS.config, FLAGS.workdir)
  try:
    result = trainer.run()
  finally:
    trainer.close()
  if trainer.is_main:
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
  cli.run(main)
