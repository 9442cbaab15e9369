"""The studies beside the core: what compares, tunes, times and checks the trained models.

`compare` (the table over seeds, from MLflow), `baseline` (the reference TF-IDF + logistic
regression), `tune` (the Optuna study), `bench` (the batching strategies timed) and
`gpu_check` (cuDNN and the saved models on a GPU). They import the core; the core never
imports them, except `cli.py`, inside the functions of the study commands (docs/design.md).
"""
