"""Model Garden's ResNet with non-local blocks, as the registered backbone `resnet_nonlocal`.

The paper (section 4) adds one non-local block to Mask R-CNN's backbone, in res4
right before its last residual block; that is the default placement here.
Model Garden has no keypoint head, so only backbone placements exist.
"""

import dataclasses
import itertools
from typing import List

from official.vision.configs import backbones as backbones_config
from official.vision.modeling.backbones import factory, resnet

from nonlocal_keras import nonlocal_math
from nonlocal_keras.applications.mask_rcnn.nonlocal_block import NonLocalBlock2D
from nonlocal_keras.applications.mask_rcnn.registration import once, serializable
from nonlocal_keras.utils import checked_bool, checked_choice

BACKBONE_TYPE = "resnet_nonlocal"
DEFAULT_PLACEMENTS = ("res4:-1",)
_FIRST_LEVEL = 2  # Model Garden numbers ResNet stages res2 .. res5 as levels 2 .. 5.


@dataclasses.dataclass
class ResNetNonLocal(backbones_config.ResNet):
    """Model Garden's ResNet config plus where and which non-local blocks go.

    `nonlocal_placements`: entries `"resS:B"`, a non-local block right before
    residual block `B` (0-based, negative counts from the end) of stage `resS`
    (res2 .. res5). The default `["res4:-1"]` is the paper's Mask R-CNN setting.
    """

    nonlocal_placements: List[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_PLACEMENTS)
    )
    nonlocal_mode: str = "embedded_gaussian"
    nonlocal_sub_sample: bool = True


@dataclasses.dataclass
class Backbone(backbones_config.Backbone):
    """Model Garden's backbone one-of, with `resnet_nonlocal` added."""

    resnet_nonlocal: ResNetNonLocal = dataclasses.field(default_factory=ResNetNonLocal)


def parse_placements(placements, model_id):
    """A frozenset of `(level, block index)` from `"resS:B"` entries, checked against the depth.

    Raises:
        ValueError: naming `nonlocal_placements` and the bad entry.
    """
    if model_id not in resnet.RESNET_SPECS:  # a bare KeyError before
        raise ValueError(f"`model_id` must be one of the ResNet depths "
                         f"{', '.join(map(str, sorted(resnet.RESNET_SPECS)))}. "
                         f"Received: model_id={model_id!r}")
    specs = resnet.RESNET_SPECS[model_id]
    if isinstance(placements, str):
        placements = [placements]
    if not isinstance(placements, (list, tuple)):  # None or 5: a TypeError before
        raise ValueError("`nonlocal_placements` must be a list of entries such as 'res4:-1' "
                         f"(empty for none). Received: nonlocal_placements={placements!r}")
    if len(placements) > 1 and all(isinstance(e, str) and len(e) == 1 for e in placements):
        # Model Garden's config stores a string given for this list as its letters.
        raise ValueError(
            "`nonlocal_placements` must be a list of entries such as 'res4:-1'; a single "
            f"string is read letter by letter (in --params_override write "
            f"nonlocal_placements=[{''.join(placements)}]). "
            f"Received: nonlocal_placements={list(placements)!r}")
    parsed = set()
    for entry in placements:
        stage, _, block = str(entry).partition(":")
        try:
            level = int(stage[3:]) if stage.startswith("res") else None
            index = int(block)
        except ValueError:
            level = index = None
        if level is None or index is None or not _FIRST_LEVEL <= level < _FIRST_LEVEL + len(specs):
            raise ValueError(
                "`nonlocal_placements` entries must look like 'res4:-1' (stage res2 to "
                "res5, then the index of the residual block the non-local block goes "
                f"before). Received: nonlocal_placements={list(placements)!r} "
                f"(bad entry {entry!r})"
            )
        repeats = specs[level - _FIRST_LEVEL][2]
        if not -repeats <= index < repeats:
            raise ValueError(
                f"`nonlocal_placements` entry {entry!r} names block {index}, but res{level} of "
                f"ResNet-{model_id} has {repeats} blocks (valid: {-repeats} to {repeats - 1}). "
                f"Received: nonlocal_placements={list(placements)!r}"
            )
        if (level, index % repeats) in parsed:
            raise ValueError(
                f"`nonlocal_placements` names block {index % repeats} of res{level} twice. "
                f"Received: nonlocal_placements={list(placements)!r}"
            )
        parsed.add((level, index % repeats))
    return frozenset(parsed)


@dataclasses.dataclass(frozen=True)
class _NonLocalPlan:
    placements: tuple
    blocks: frozenset  # {(level, block index)}
    mode: str
    sub_sample: bool


@serializable
class ResNetNonLocalModel(resnet.ResNet):
    """Model Garden's `ResNet`, with `NonLocalBlock2D`s between its residual blocks.

    It reuses Model Garden's stem and block groups: each block group gets a
    block factory that, at the configured indices, applies a non-local block
    to the block's input. Everything else is Model Garden's ResNet unchanged,
    so the plain ResNet's weights map one to one onto the non-NL layers.
    The non-local blocks are named `nonlocal_res{S}_{B}`.

    Args:
        nonlocal_placements, nonlocal_mode, nonlocal_sub_sample: as in the
            `ResNetNonLocal` config.
        **kwargs: Model Garden's `ResNet` arguments.
    """

    def __init__(
        self,
        model_id,
        nonlocal_placements=DEFAULT_PLACEMENTS,
        nonlocal_mode="embedded_gaussian",
        nonlocal_sub_sample=True,
        **kwargs,
    ):
        checked_choice("nonlocal_mode", nonlocal_mode, nonlocal_math.MODES)
        # One plain object: tf_keras checks containers assigned before
        # Model.__init__ (an empty tuple trips it) and tracks lists and dicts.
        blocks = parse_placements(nonlocal_placements, model_id)
        self._nonlocal = _NonLocalPlan(
            placements=tuple(nonlocal_placements),
            blocks=blocks,
            mode=nonlocal_mode,
            sub_sample=checked_bool("nonlocal_sub_sample", nonlocal_sub_sample),
        )
        # ResNet.__init__ calls _block_group once per stage, in order res2 .. res5.
        self._levels = itertools.count(_FIRST_LEVEL)
        super().__init__(model_id=model_id, **kwargs)

    def _block_group(self, inputs, filters, strides, block_fn, **kwargs):
        level = next(self._levels)
        indices = itertools.count()

        def block_fn_with_nonlocal(**block_kwargs):
            block, index = block_fn(**block_kwargs), next(indices)
            if (level, index) not in self._nonlocal.blocks:
                return block
            nonlocal_block = NonLocalBlock2D(
                mode=self._nonlocal.mode,
                sub_sample=self._nonlocal.sub_sample,
                kernel_regularizer=self._kernel_regularizer,
                norm_momentum=self._norm_momentum,
                norm_epsilon=self._norm_epsilon,
                use_sync_bn=self._use_sync_bn,
                name=f"nonlocal_res{level}_{index}",
            )

            def nonlocal_then_block(x):
                # Both layers join the functional graph; no wrapper layer, so
                # the ResNet's own layers stay exactly Model Garden's.
                return block(nonlocal_block(x))

            return nonlocal_then_block

        return super()._block_group(
            inputs, filters, strides, block_fn_with_nonlocal, **kwargs
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            nonlocal_placements=list(self._nonlocal.placements),
            nonlocal_mode=self._nonlocal.mode,
            nonlocal_sub_sample=self._nonlocal.sub_sample,
        )
        return config


def _resnet_arguments(backbone_cfg, norm_activation_config, l2_regularizer):
    # Model Garden's `build_resnet` mapping from config to ResNet arguments.
    return dict(
        model_id=backbone_cfg.model_id,
        depth_multiplier=backbone_cfg.depth_multiplier,
        stem_type=backbone_cfg.stem_type,
        resnetd_shortcut=backbone_cfg.resnetd_shortcut,
        replace_stem_max_pool=backbone_cfg.replace_stem_max_pool,
        se_ratio=backbone_cfg.se_ratio,
        init_stochastic_depth_rate=backbone_cfg.stochastic_depth_drop_rate,
        scale_stem=backbone_cfg.scale_stem,
        activation=norm_activation_config.activation,
        use_sync_bn=norm_activation_config.use_sync_bn,
        norm_momentum=norm_activation_config.norm_momentum,
        norm_epsilon=norm_activation_config.norm_epsilon,
        kernel_regularizer=l2_regularizer,
        bn_trainable=backbone_cfg.bn_trainable,
    )


@once(factory.register_backbone_builder(BACKBONE_TYPE))
def build_resnet_nonlocal(input_specs, backbone_config, norm_activation_config,
                          l2_regularizer=None):
    """Builds `ResNetNonLocalModel` from a `Backbone` config of type `resnet_nonlocal`."""
    if backbone_config.type != BACKBONE_TYPE:
        raise ValueError(
            f"build_resnet_nonlocal needs backbone type {BACKBONE_TYPE!r}. "
            f"Received: backbone_config.type={backbone_config.type!r}"
        )
    cfg = backbone_config.get()
    return ResNetNonLocalModel(
        nonlocal_placements=list(cfg.nonlocal_placements),
        nonlocal_mode=cfg.nonlocal_mode,
        nonlocal_sub_sample=cfg.nonlocal_sub_sample,
        input_specs=input_specs,
        **_resnet_arguments(cfg, norm_activation_config, l2_regularizer),
    )


def build_plain_resnet(input_specs, backbone_config, norm_activation_config,
                       l2_regularizer=None):
    """Model Garden's own ResNet with the same settings, minus the non-local blocks."""
    cfg = backbone_config.get()
    return resnet.ResNet(
        input_specs=input_specs,
        **_resnet_arguments(cfg, norm_activation_config, l2_regularizer),
    )


def is_nonlocal_layer(layer):
    return isinstance(layer, NonLocalBlock2D)
