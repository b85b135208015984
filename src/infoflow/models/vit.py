"""Vision Transformers whose named layers output (N, C, h, w) maps over the patch grid.

`TokenViT` and `TokenSwin` wrap torchvision's `VisionTransformer` and `SwinTransformer`: they hold the same
submodules under the same names (so torchvision's state dicts load unchanged and module paths such as
``encoder.layers.encoder_layer_5`` still resolve) and add parameter-free `infoflow.models.tokens` adapters,
named ``embed``, ``block1`` .. ``blockN`` (ViT) and ``embed``, ``stage{S}_{B}`` (Swin), whose outputs are the
patch maps every infoflow method works on. The forward passes equal torchvision's (see `tests/test_vit.py`);
only the adapters' maps are new. The class token is never part of a map (see `infoflow.models.tokens`).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention, SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from infoflow.models.shapesnet import conv_bn_relu
from infoflow.models.tokens import ChannelsFirst, TokenMap, channels_last, with_patch_tokens


class TokenViT(nn.Module):
    """A torchvision `VisionTransformer` (class token first) with map adapters ``embed``, ``block1..N``.

    ``embed`` is after the patch embedding, the class token and the position embedding; ``block{i}`` after
    the i-th encoder block. Images (N, 3, S, S) -> logits (N, K).
    """

    #: the class token crosses every cut: `SplitModel` uses its hook split (`infoflow.models.tokens`)
    fx_split = False

    def __init__(self, vit: VisionTransformer, num_prefix: int = 1) -> None:
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = vit.image_size, vit.patch_size, vit.hidden_dim
        self.num_prefix = num_prefix
        self.conv_proj, self.class_token, self.encoder = vit.conv_proj, vit.class_token, vit.encoder
        grid = (vit.image_size // vit.patch_size,) * 2
        self.embed = TokenMap(grid, num_prefix)
        self.block_names = [f"block{i + 1}" for i in range(len(vit.encoder.layers))]
        for name in self.block_names:
            self.add_module(name, TokenMap(grid, num_prefix))
        self.heads = vit.heads  # registered last: named_modules() lists the layers in forward order
        #: adapter name -> module path of the parameters computing it (e.g. for the randomisation sanity check)
        self.parameter_paths = {"embed": "conv_proj", **{
            name: f"encoder.layers.{child}" for name, (child, _) in
            zip(self.block_names, self.encoder.layers.named_children(), strict=True)}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.conv_proj(x).flatten(2).transpose(1, 2)  # (N, h*w, C)
        tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), patches], dim=1)
        tokens = self.encoder.dropout(tokens + self.encoder.pos_embedding)
        grid = self.embed(tokens)
        for layer, name in zip(self.encoder.layers, self.block_names, strict=True):
            tokens = layer(with_patch_tokens(tokens, grid, self.num_prefix))
            grid = self.get_submodule(name)(tokens)
        tokens = self.encoder.ln(with_patch_tokens(tokens, grid, self.num_prefix))
        return self.heads(tokens[:, 0])


class TokenSwin(nn.Module):
    """A torchvision `SwinTransformer` with map adapters ``embed`` and ``stage{S}_{B}`` (block B of stage S).

    Images (N, 3, H, W) -> logits (N, K); the maps of stage S are (N, C * 2**(S-1), H / (p * 2**(S-1)), ...).
    """

    def __init__(self, swin: SwinTransformer) -> None:
        super().__init__()
        self.features = swin.features
        self.embed = ChannelsFirst()
        self.stage_names: list[list[str]] = []
        for s, stage in enumerate(self.features[1::2]):
            self.stage_names.append([f"stage{s + 1}_{b + 1}" for b in range(len(stage))])
            for name in self.stage_names[-1]:
                self.add_module(name, ChannelsFirst())
        #: adapter name -> module path of the parameters computing it (see `TokenViT.parameter_paths`)
        self.parameter_paths = {"embed": "features.0", **{
            name: f"features.{2 * s + 1}.{b}" for s, names in enumerate(self.stage_names)
            for b, name in enumerate(names)}}
        # registered last: named_modules() lists the layers in forward order
        self.norm, self.permute, self.avgpool, self.flatten, self.head = (
            swin.norm, swin.permute, swin.avgpool, swin.flatten, swin.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last(self.embed(self.features[0](x)))
        for s, names in enumerate(self.stage_names):
            if s > 0:
                x = self.features[2 * s](x)  # patch merging
            for block, name in zip(self.features[2 * s + 1], names, strict=True):
                x = channels_last(self.get_submodule(name)(block(x)))
        return self.head(self.flatten(self.avgpool(self.permute(self.norm(x)))))


def shapesvit(num_classes: int = 4, image_size: int = 64) -> TokenViT:
    """The built-in ViT for the `shapes` data: a hybrid ViT (Dosovitskiy et al. 2021, sec. 3.1), 6 blocks of
    width 64 with a class token, on an 8x8 patch grid at 64x64.

    Its patch embedding is a convolutional stem (ShapesNet's first three conv-BN-ReLU blocks, each followed by
    2x2 max-pooling, then a 1x1 projection): an effective patch size of 8 whose tokens see 22x22 pixels.
    A plain ViT with a linear 8x8 patch embedding stays at chance on the 5000 training images (tried: learning
    rates 1e-4..3e-3, widths 64/128, patch 4, mean pooling, a ShapesNet teacher, 30 epochs); with this stem it
    trains in a few CPU minutes. Everything after the stem is torchvision's `VisionTransformer`.
    """
    hidden_dim, widths = 64, (16, 32, 64)
    vit = VisionTransformer(image_size=image_size, patch_size=8, num_layers=6, num_heads=4,
                            hidden_dim=hidden_dim, mlp_dim=2 * hidden_dim, num_classes=num_classes)
    stem: list[nn.Module] = []
    for cin, cout in zip((3, *widths[:-1]), widths, strict=True):
        stem += [*conv_bn_relu(cin, cout), nn.MaxPool2d(2)]
    vit.conv_proj = nn.Sequential(*stem, nn.Conv2d(widths[-1], hidden_dim, 1))
    return TokenViT(vit)


def is_transformer(module: nn.Module) -> bool:
    """Whether `module` has attention layers (torchvision's multi-head or shifted-window attention; timm's
    attention modules, which hold a fused ``qkv`` projection)."""
    return any(isinstance(m, nn.MultiheadAttention | ShiftedWindowAttention)
               or isinstance(getattr(m, "qkv", None), nn.Linear) for m in module.modules())


def transformer_reason(module: nn.Module, method: str, model_name: str) -> str | None:
    """Why `method` (which has no sound rule for attention) cannot explain `module`, if it is a transformer."""
    if not is_transformer(module):
        return None
    return (f"{method} has no sound rule set for attention layers, and {model_name!r} is a transformer; on "
            "transformers use iba, readout, gradient, saliency, smoothgrad, integrated-gradients, guided-backprop, "
            "gradcam, guided-gradcam, occlusion-8/14 or attention-rollout (ViT)")
