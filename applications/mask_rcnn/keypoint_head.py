"""The Keypoint R-CNN head, with the paper's optional non-local blocks between its convolutions.

Mask R-CNN's keypoint branch (section 5 of its paper, Detectron's `KRCNN`
defaults): on 14x14 RoI features, eight 3x3 convolutions of 512 channels with
ReLU, a 4x4 stride-2 transposed convolution to K channels (28x28) and a 2x
bilinear upsampling to K heatmaps of 56x56. The non-local paper (section 4)
adds four non-local blocks to it, one after every two convolutions.
"""

import tensorflow as tf
import tf_keras

from nonlocal_keras import nonlocal_math
from nonlocal_keras.applications.mask_rcnn.nonlocal_block import NonLocalBlock2D, build_in_scope
from nonlocal_keras.applications.mask_rcnn.registration import serializable
from nonlocal_keras.utils import checked_choice, is_positive_int

PAPER_HEAD_NONLOCAL = (2, 4, 6, 8)


def _msra():
    # Detectron's MSRAFill: zero-mean Gaussian, variance 2 / fan_out.
    return tf_keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal")


@serializable
class KeypointHead(tf_keras.layers.Layer):
    """Heatmap logits `(batch, rois, 4h, 4w, K)` from RoI features `(batch, rois, h, w, C)`.

    Args:
        num_keypoints: K, one heatmap each (17 for COCO persons).
        num_convs, num_filters: the 3x3 convolutions (8 x 512 in the paper).
        head_nonlocal: the convolutions (1-based) after which a non-local
            block goes; the paper's `(2, 4, 6, 8)`, `()` for none.
        nonlocal_mode, nonlocal_sub_sample: of those blocks (`NonLocalBlock2D`).
        use_sync_bn, norm_momentum, norm_epsilon: of the blocks' BatchNorm.
        kernel_regularizer: of every convolution and block projection.
    """

    def __init__(
        self,
        num_keypoints=17,
        num_convs=8,
        num_filters=512,
        head_nonlocal=(),
        nonlocal_mode="embedded_gaussian",
        nonlocal_sub_sample=True,
        use_sync_bn=False,
        norm_momentum=0.99,
        norm_epsilon=0.001,
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("num_keypoints", num_keypoints), ("num_convs", num_convs),
                            ("num_filters", num_filters)):
            if not is_positive_int(value):
                raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
        head_nonlocal = tuple(head_nonlocal)
        if (not all(is_positive_int(i) and i <= num_convs for i in head_nonlocal)
                or len(set(head_nonlocal)) != len(head_nonlocal)):
            raise ValueError(
                f"`head_nonlocal` lists distinct convolutions 1 to {num_convs} (num_convs) "
                f"after which a non-local block goes. Received: head_nonlocal={list(head_nonlocal)!r}"
            )
        checked_choice("nonlocal_mode", nonlocal_mode, nonlocal_math.MODES)
        self.num_keypoints = num_keypoints
        self.num_convs = num_convs
        self.num_filters = num_filters
        self.head_nonlocal = head_nonlocal
        self.nonlocal_mode = nonlocal_mode
        self.nonlocal_sub_sample = bool(nonlocal_sub_sample)
        self.use_sync_bn = bool(use_sync_bn)
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.kernel_regularizer = tf_keras.regularizers.get(kernel_regularizer)
        self.convs = self.blocks = self.deconv = None

    def build(self, input_shape):
        height, width, channels = (int(d) for d in input_shape[-3:])
        # A list, not a dict keyed by int: tf_keras checkpoints only string keys.
        self.convs, self.blocks = [], []
        for index in range(1, self.num_convs + 1):
            conv = tf_keras.layers.Conv2D(
                self.num_filters, 3, padding="same", activation="relu",
                kernel_initializer=_msra(), kernel_regularizer=self.kernel_regularizer,
                name=f"keypoint_conv_{index}")
            build_in_scope(conv, (None, height, width, channels if index == 1 else self.num_filters))
            self.convs.append(conv)
            if index in self.head_nonlocal:
                block = NonLocalBlock2D(
                    mode=self.nonlocal_mode, sub_sample=self.nonlocal_sub_sample,
                    kernel_regularizer=self.kernel_regularizer, norm_momentum=self.norm_momentum,
                    norm_epsilon=self.norm_epsilon, use_sync_bn=self.use_sync_bn,
                    name=f"keypoint_nonlocal_{index}")
                build_in_scope(block, (None, height, width, self.num_filters))
                self.blocks.append(block)
        self.deconv = tf_keras.layers.Conv2DTranspose(
            self.num_keypoints, 4, strides=2, padding="same", kernel_initializer=_msra(),
            kernel_regularizer=self.kernel_regularizer, name="keypoint_deconv")
        build_in_scope(self.deconv, (None, height, width, self.num_filters))
        super().build(input_shape)

    def call(self, roi_features, training=None):
        shape = tf.shape(roi_features)
        height, width, channels = roi_features.shape[-3:]
        x = tf.reshape(roi_features, [-1, height, width, channels])
        blocks = dict(zip(sorted(self.head_nonlocal), self.blocks))
        for index, conv in enumerate(self.convs, start=1):
            x = conv(x)
            if index in blocks:
                x = blocks[index](x, training=training)
        x = self.deconv(x)
        # Bilinear 2x, as Detectron's KRCNN.UP_SCALE: 28x28 -> 56x56.
        x = tf.image.resize(x, [4 * height, 4 * width], method="bilinear")
        return tf.reshape(x, tf.concat([shape[:2], [4 * height, 4 * width, self.num_keypoints]], 0))

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return input_shape[:2].concatenate(
            [4 * input_shape[2], 4 * input_shape[3], self.num_keypoints])

    def get_config(self):
        config = super().get_config()
        config.update(
            num_keypoints=self.num_keypoints,
            num_convs=self.num_convs,
            num_filters=self.num_filters,
            head_nonlocal=list(self.head_nonlocal),
            nonlocal_mode=self.nonlocal_mode,
            nonlocal_sub_sample=self.nonlocal_sub_sample,
            use_sync_bn=self.use_sync_bn,
            norm_momentum=self.norm_momentum,
            norm_epsilon=self.norm_epsilon,
            kernel_regularizer=tf_keras.regularizers.serialize(self.kernel_regularizer),
        )
        return config

