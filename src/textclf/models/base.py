"""What every model builds from (`ModelInputs`) and ends in (`head`), and the registry mapping
a config class to its functions (docs/design.md, Models). A model's optional `fit(net, train,
val, cfg, callbacks)` solves it instead of Keras' loop (bow's logistic regression) and returns
(history, seconds per step of the solver, index of the kept step, stop reason).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers

from ..config import BatchingConfig, ConfigError, ModelConfig, registered


@dataclass
class ModelInputs:
    """What the data tell a model before it is built."""

    vocab_size: int  # token ids are < vocab_size; 0 is padding, 1 out-of-vocabulary
    num_classes: int  # 2: one sigmoid output; more: a softmax over them
    batching: BatchingConfig  # how the batches it reads are made (the side of their padding)
    train_tokens: Any = None  # tf.RaggedTensor of the training rows' ids (for adapted layers)
    train_labels: Any = None  # np.ndarray of their class ids, in the same order


@dataclass
class Model:
    config: type[ModelConfig]
    build: Callable[[Any, ModelInputs], keras.Model]
    serving: Callable[[keras.Model, Any], keras.Model] = lambda net, cfg: net
    fit: Callable | None = None  # None: Keras' training loop (train.fit)


REGISTRY: dict[str, Model] = {}


def register(
    config: type[ModelConfig],
    build: Callable,
    serving: Callable | None = None,
    fit: Callable | None = None,
) -> None:
    """Make a model buildable by `build`; the entry point also gives Hydra its config as the
    `<name>_schema` of the `model` group, which `conf/model/<name>.yaml` starts from
    (`model=<name>` selects it)."""
    REGISTRY[config.name] = Model(config, build, serving or Model.serving, fit)


def spec(cfg: ModelConfig) -> Model:
    how = "textclf.models.register(<config class>, <build function>)"
    return registered(REGISTRY, cfg.name, cfg, "model", "model", how)


PROBABILITIES = ("probability", "probabilities")  # the output layer's name: 2 classes, more


def head(features, num_classes: int, name: str = "logits"):
    """Features → class probabilities through one linear layer (one logit for two classes: a
    sigmoid's, else a softmax's). A network ending here exposes its logits (`logits`)."""
    width = 1 if num_classes == 2 else num_classes
    return probabilities(layers.Dense(width, dtype="float32", name=name)(features), num_classes)


def probabilities(logits, num_classes: int):
    """Logits → class probabilities: a sigmoid's one for two classes, else a softmax."""
    activation, name = (
        ("sigmoid", PROBABILITIES[0]) if num_classes == 2 else ("softmax", PROBABILITIES[1])
    )
    return layers.Activation(activation, dtype="float32", name=name)(logits)


def logits(net: keras.Model):
    """The logits `net` turns into probabilities: the input of its `head`'s output layer."""
    last = net.layers[-1]
    if last.name not in PROBABILITIES:
        raise ConfigError(
            f"model.ngram_branch: model {net.name!r} ends in layer {last.name!r}, not a head's "
            "probabilities: "
            "end its build function with textclf.models.head(features, inputs.num_classes) "
            "to offer the n-gram mix, or set model.ngram_branch=false"
        )
    return last.input
