"""Distillation: divergences, data sources, the offline teacher cache, the jitted steps and the loop.

    from specdistill_jax.distill import divergences, sources, train
    train.Trainer(config, workdir).run()      # or: python -m specdistill_jax.train --config=...
"""
