"""The models, one module each, and the one registry line per model that makes it
`model=<name>`: a config class (its defaults and checks), a build function, if the served
network differs from the trained one a serving function, if it is not trained by Keras'
loop a fit function, and if a step follows training a finish function. A new model is a
module here, a `conf/model/<name>.yaml` and a line below."""

from __future__ import annotations

import keras

from ..config import ModelConfig
from . import bow, lstm
from .base import REGISTRY, ModelInputs, register, spec

register(lstm.LstmConfig, lstm.build, lstm.serving, finish=lstm.finish)
register(bow.BowConfig, bow.build, fit=bow.fit)


def build(cfg: ModelConfig, inputs: ModelInputs) -> keras.Model:
    """The uncompiled model `cfg` describes."""
    return spec(cfg).build(cfg, inputs)


def serving(net: keras.Model, cfg: ModelConfig) -> keras.Model:
    """The trained `net` as the exported model runs it."""
    return spec(cfg).serving(net, cfg)


__all__ = ["REGISTRY", "ModelInputs", "build", "register", "serving", "spec"]
