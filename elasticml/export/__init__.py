"""Launch files that run a recipe elastically under a scheduler: Slurm (`slurm.py`) and
Kubernetes with Kubeflow's Training Operator (`kubernetes.py`), both rendered from the
`LaunchPlan` that `elasticml train` runs (`launch.py`)."""
