"""Keras' own conformance check (`keras.src.testing.TestCase.run_layer_test`:
config round trip, serialisation, symbolic and eager calls, a training step,
mixed precision) for every layer the package ships."""

from keras.src import testing

from nonlocal_keras.applications.video_resnet_conv import ConcatenatedZeroPadding3D, VideoConv3D
from nonlocal_keras.layers import (BaseNonLocal, FusedBatchNormalization, NonLocal1D,
                                   NonLocal2D, NonLocal3D)

# theta, phi, g and W_z: 1x1 convolutions with biases (the official blobs have
# `_w` and `_b`); the BN after W_z: gamma and beta, and its moving statistics.
# The Gaussian compares the inputs themselves: no theta, no phi.
BLOCK_TRAINABLE, BLOCK_NON_TRAINABLE = 4 * 2 + 2, 2
PROJECTIONS = {"gaussian": 2, "embedded_gaussian": 4, "dot_product": 4}


class LayerConformance(testing.TestCase):

    def test_nonlocal_blocks_of_every_rank(self):
        for layer_cls, shape in ((NonLocal1D, (2, 8, 6)), (NonLocal2D, (2, 4, 4, 6)),
                                 (NonLocal3D, (2, 2, 4, 4, 6))):
            for mode, projections in PROJECTIONS.items():
                self.run_layer_test(
                    layer_cls, {"mode": mode, "inter_channels": 3}, input_shape=shape,
                    expected_output_shape=shape,
                    expected_num_trainable_weights=2 * projections + 2,
                    expected_num_non_trainable_weights=BLOCK_NON_TRAINABLE,
                    supports_masking=True)

    def test_concatenation_adds_its_pairwise_weights(self):
        # W_f: a 1x1 map of [theta_i, phi_j] to one logit, without a bias (the official concat).
        self.run_layer_test(
            NonLocal2D, {"mode": "concatenation", "inter_channels": 3}, input_shape=(2, 4, 4, 6),
            expected_output_shape=(2, 4, 4, 6),
            expected_num_trainable_weights=BLOCK_TRAINABLE + 1,
            expected_num_non_trainable_weights=BLOCK_NON_TRAINABLE, supports_masking=True)

    def test_base_class_and_options(self):
        self.run_layer_test(
            BaseNonLocal, {"rank": 3, "sub_sample": False, "use_bn": False, "affinity": "space"},
            input_shape=(2, 2, 4, 4, 6), expected_output_shape=(2, 2, 4, 4, 6),
            expected_num_trainable_weights=4 * 2, expected_num_non_trainable_weights=0,
            supports_masking=True)
        # The official frozen-BN releases' res3 blocks: no BN, groups of frames.
        self.run_layer_test(
            NonLocal3D, {"use_bn": False, "frames_per_group": 2}, input_shape=(2, 4, 4, 4, 6),
            expected_output_shape=(2, 4, 4, 4, 6), expected_num_trainable_weights=4 * 2,
            expected_num_non_trainable_weights=0, supports_masking=True)
        self.run_layer_test(
            NonLocal2D, {"data_format": "channels_first"}, input_shape=(2, 6, 4, 4),
            expected_output_shape=(2, 6, 4, 4), expected_num_trainable_weights=BLOCK_TRAINABLE,
            expected_num_non_trainable_weights=BLOCK_NON_TRAINABLE, supports_masking=True)

    def test_fused_batch_normalization(self):
        self.run_layer_test(
            FusedBatchNormalization, {"axis": -1, "momentum": 0.9, "epsilon": 1e-5},
            input_shape=(2, 3, 4, 4, 5), expected_output_shape=(2, 3, 4, 4, 5),
            expected_num_trainable_weights=2, expected_num_non_trainable_weights=2,
            supports_masking=True)
        self.run_layer_test(
            FusedBatchNormalization, {"frozen_statistics": True},
            input_shape=(2, 3, 4, 4, 5), expected_output_shape=(2, 3, 4, 4, 5),
            expected_num_trainable_weights=2, expected_num_non_trainable_weights=2,
            supports_masking=True)

    def test_video_conv3d_on_each_of_its_paths(self):
        for kernel, strides in (((1, 1, 1), (1, 2, 2)), ((1, 3, 3), (1, 1, 1)),
                                ((3, 3, 3), (1, 1, 1))):
            self.run_layer_test(
                VideoConv3D, {"filters": 4, "kernel_size": kernel, "strides": strides,
                              "padding": "same"},
                input_shape=(2, 3, 4, 4, 5),
                expected_output_shape=(2, 3, 4 // strides[1], 4 // strides[2], 4),
                expected_num_trainable_weights=2, expected_num_non_trainable_weights=0)

    def test_concatenated_zero_padding(self):
        self.run_layer_test(
            ConcatenatedZeroPadding3D, {"padding": (1, 2, 3)}, input_shape=(2, 3, 4, 4, 5),
            expected_output_shape=(2, 5, 8, 10, 5), expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0)
