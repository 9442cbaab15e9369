"""Text classification template: masked Embedding-LSTM on ragged text, Hydra, MLflow."""

import os

# TensorFlow's C++ start-up chatter hides the messages that matter; set it to 0 to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
