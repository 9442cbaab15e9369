"""The models, one module each, and one registry line per model making it `model=<name>`
(with `conf/model/<name>.yaml`; docs/design.md, Models)."""

from __future__ import annotations

import keras

from ..config import ModelConfig
from . import bow, fusion, lstm
from .base import REGISTRY, ModelInputs, head, logits, register, spec

register(lstm.LstmConfig, lstm.build, lstm.serving)
register(bow.BowConfig, bow.build, fit=bow.fit)


def build(cfg: ModelConfig, inputs: ModelInputs) -> keras.Model:
    """The uncompiled model `cfg` describes; one that asks for the n-gram mix must expose its
    logits (`head`), checked here rather than after training."""
    net = spec(cfg).build(cfg, inputs)
    if isinstance(cfg, fusion.LateFusion) and cfg.ngram_branch:
        logits(net)
    return net


def serving(net: keras.Model, cfg: ModelConfig) -> keras.Model:
    """The trained `net` as the exported model runs it."""
    return spec(cfg).serving(net, cfg)


def mixer(
    net: keras.Model, inputs: ModelInputs, train, val, val_batches, cfg: ModelConfig
) -> fusion.Mixer | None:
    """Late fusion's n-gram half, solved before training, if `cfg` offers it and asks for it;
    it mixes after training (`fusion.Mixer`)."""
    if isinstance(cfg, fusion.LateFusion) and cfg.ngram_branch:
        return fusion.Mixer(net, inputs, train, val, val_batches, cfg)
    return None


__all__ = ["REGISTRY", "ModelInputs", "build", "head", "mixer", "register", "serving", "spec"]
