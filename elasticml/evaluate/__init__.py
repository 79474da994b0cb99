"""`elasticml eval`: score a checkpoint on one split, from the recipe stored inside it.

`command` resolves the checkpoint and runs the command, `scoring` rebuilds the task and scores
one shard, `parallel` spreads the shards over processes, `output` shows and keeps the result.
"""
