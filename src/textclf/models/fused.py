"""The LSTM the exported model serves with: TensorFlow's fused CPU kernel, same weights.

Keras' LSTM on CPU runs a graph loop of small ops per time step; one review served alone is
then dominated by op overhead. `FusedLSTM` runs the whole sequence in one `BlockLSTM` op each
way: single-review latency 3.3x lower in `make bench` (docs/bench.md). For training it measured
0.90x Keras' loop, so training keeps `keras.layers.LSTM` and `fused_copy` swaps the kernel in
at export (`model.serve_lstm=fused`).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="textclf")
class LSTM(keras.layers.LSTM):
    """`keras.layers.LSTM` whose config keeps `use_cudnn`. Keras 3.15's `get_config` leaves it
    out, so a layer built with `use_cudnn=False` (left padding with a mask: cuDNN takes only
    right-padded masks) is back at "auto" once cloned, copied for `Bidirectional`'s backward
    direction or reloaded from model.keras, and on a GPU a left-padded mask then fails
    (`InvalidArgumentError ... right-padded sequences`) instead of taking the generic kernel."""

    def get_config(self) -> dict:
        return super().get_config() | {"use_cudnn": self.use_cudnn}


@keras.saving.register_keras_serializable(package="textclf")
class FusedLSTM(LSTM):
    """`keras.layers.LSTM` run by TensorFlow's fused kernel (`BlockLSTM`, the op behind the
    old `LSTMBlockFusedCell`).

    The kernel takes no per-row mask, only a step count, so each row's unmasked steps are
    gathered to its front, run, and the outputs put back where Keras' LSTM puts them (zeros
    before the first unmasked step, the last output repeated after the last one, states
    frozen over masked steps). That needs a mask without holes, which padding on either side
    gives; any other mask is an error. On a GPU, Keras' own path (cuDNN) runs unless
    `use_cudnn=False` (left padding with a mask), where `BlockLSTM`'s GPU kernel runs the
    aligned rows as on CPU (`make gpu-check` compares the answers); recurrent dropout and
    non-default activations always take Keras' path.
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        default_activations = (
            cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid
        )
        if (
            keras.backend.backend() != "tensorflow"
            or cell.recurrent_dropout
            or not default_activations
            or (self.use_cudnn is not False and tf.config.list_logical_devices("GPU"))
        ):
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)
        if isinstance(mask, list | tuple):
            mask = mask[0]
        if training and cell.dropout:  # one mask per sequence, as Keras' LSTM applies it
            sequences = sequences * ops.expand_dims(cell.get_dropout_mask(sequences[:, 0, :]), 1)
        return _fused_loop(
            sequences, mask, initial_state, cell, self.go_backwards, self.zero_output_for_mask
        )


def _fused_loop(sequences, mask, initial_state, cell, go_backwards: bool, zero_output: bool):
    x = tf.convert_to_tensor(sequences)
    batch, steps = tf.shape(x)[0], tf.shape(x)[1]
    mask = tf.ones([batch, steps], tf.bool) if mask is None else tf.cast(mask, tf.bool)
    if go_backwards:  # Keras reads the steps in reverse and returns outputs in that order
        x, mask = tf.reverse(x, [1]), tf.reverse(mask, [1])
    time = tf.range(steps)[tf.newaxis, :]
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    first = tf.argmax(tf.cast(mask, tf.int32), axis=1, output_type=tf.int32)[:, tf.newaxis]
    inside = (time >= first) & (time < first + lengths[:, tf.newaxis])
    check = tf.debugging.assert_equal(
        mask,
        inside,
        message="model.serve_lstm=fused needs each row's mask to be one unbroken "
        "run of steps (padding on one side); export with model.serve_lstm=trained for others",
    )
    with tf.control_dependencies([check]):
        aligned = tf.gather(x, tf.minimum(first + time, steps - 1), batch_dims=1)
    h0, c0 = (tf.cast(state, x.dtype) for state in initial_state)
    # BlockLSTM (v1) orders the gates i, c, f, o; Keras i, f, c, o. Not BlockLSTMV2 (Keras'
    # order): TensorFlow registers v1's gradient for it, which gives wrong gradients.
    kernel = tf.concat([cell.kernel, cell.recurrent_kernel], axis=0)
    bias = cell.bias if cell.use_bias else tf.zeros([4 * cell.units], x.dtype)
    i, f, c, o = tf.split(kernel, 4, axis=1)
    bias_i, bias_f, bias_c, bias_o = tf.split(bias, 4)
    peephole = tf.zeros([cell.units], x.dtype)
    _, carries, _, _, _, _, hidden = tf.raw_ops.BlockLSTM(
        seq_len_max=tf.cast(tf.reduce_max(lengths), tf.int64),
        x=tf.transpose(aligned, [1, 0, 2]),
        cs_prev=c0,
        h_prev=h0,
        w=tf.concat([i, c, f, o], axis=1),
        b=tf.concat([bias_i, bias_c, bias_f, bias_o], 0),
        wci=peephole,
        wcf=peephole,
        wco=peephole,
        forget_bias=0.0,
        cell_clip=-1.0,
        use_peephole=False,
    )
    hidden = tf.transpose(hidden, [1, 0, 2])
    carries = tf.transpose(carries, [1, 0, 2])
    # back to Keras' places: step t shows the output of aligned step t - first, clipped to the
    # last unmasked one; zeros before the first (the initial output) and, if asked, after
    last = tf.maximum(lengths - 1, 0)[:, tf.newaxis]
    outputs = tf.gather(hidden, tf.clip_by_value(time - first, 0, last), batch_dims=1)
    any_step = (lengths > 0)[:, tf.newaxis]
    shown = inside if zero_output else (time >= first) & any_step
    outputs = tf.where(shown[:, :, tf.newaxis], outputs, tf.zeros_like(outputs))
    h_last = tf.where(any_step, tf.gather(hidden, last, batch_dims=1)[:, 0], h0)
    c_last = tf.where(any_step, tf.gather(carries, last, batch_dims=1)[:, 0], c0)
    return outputs[:, -1], outputs, [h_last, c_last]


def fused_copy(net: keras.Model) -> keras.Model:
    """`net` with every Keras LSTM replaced by a `FusedLSTM` holding the same
    weights; all other layers are shared, not copied. For serving: the answers are the same
    (to float rounding), and one review runs in one kernel call instead of a loop of small ops
    per time step (docs/bench.md). Layers computing in another dtype than float32 (mixed
    precision) are kept as they are."""

    def fused(layer: keras.layers.LSTM) -> keras.layers.Layer:
        if type(layer) not in (LSTM, keras.layers.LSTM) or layer.compute_dtype != "float32":
            return layer
        return FusedLSTM.from_config(layer.get_config())

    def swap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.layers.Bidirectional):
            forward, backward = fused(layer.forward_layer), fused(layer.backward_layer)
            if forward is layer.forward_layer:
                return layer
            return keras.layers.Bidirectional(
                forward, backward_layer=backward, merge_mode=layer.merge_mode, name=layer.name
            )
        return fused(layer) if isinstance(layer, keras.layers.LSTM) else layer

    copy = keras.models.clone_model(net, clone_function=swap)
    for old, new in zip(net.layers, copy.layers, strict=True):
        if new is not old:
            new.set_weights(old.get_weights())
    return copy


def lstm_layers(net: keras.Model) -> list[keras.layers.LSTM]:
    """Every LSTM layer of `net`, both directions of a Bidirectional one."""
    found = []
    for layer in net.layers:
        if isinstance(layer, keras.layers.Bidirectional):
            found += [layer.forward_layer, layer.backward_layer]
        elif isinstance(layer, keras.layers.LSTM):
            found.append(layer)
    return found
