"""Tiny, randomly initialized models of the kinds users train, built from library configs (nothing downloaded).

Each entry: name -> (build() -> model, batch() -> (inputs, loss_fn)). timm and torchvision do not install
next to this project's CPU torch, so their ViT and ResNet are hand-written equivalents with the same layer
types (torchvision's ViT encoder is nn.MultiheadAttention; timm's attention is one qkv Linear).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _tokens(vocab: int, n: int = 4, t: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(0))


def gpt2():
    import transformers

    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = _tokens(64)
    return model, lambda m: m(input_ids=ids, labels=ids).loss


def llama():
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(cfg)
    ids = _tokens(64)
    return model, lambda m: m(input_ids=ids, labels=ids).loss


def bert():
    import transformers

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg)
    ids, labels = _tokens(64), torch.tensor([0, 1, 2, 1])
    return model, lambda m: m(input_ids=ids, labels=labels).loss


def t5():
    import transformers

    cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(cfg)
    ids = _tokens(64)
    return model, lambda m: m(input_ids=ids, labels=ids).loss


def lora_llama():
    import peft

    base, loss = llama()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    return model, loss


def unet2d():
    import diffusers

    model = diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                                  block_out_channels=(8, 16), norm_num_groups=4,
                                  down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 2, 8, 8, generator=g), torch.tensor([3, 7])
    return model, lambda m: m(x, t).sample.pow(2).mean()


class _Encoder(nn.Module):
    """torchvision-style ViT: conv patch embedding, nn.TransformerEncoder (nn.MultiheadAttention inside)."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.pos = nn.Parameter(torch.zeros(1, 4, d))
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.encoder(h).mean(1))


def vit_mha():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])
    return _Encoder(), lambda m: nn.functional.cross_entropy(m(x), y)


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def resnet():
    """torchvision-style ResNet: stem conv, BasicBlocks with BatchNorm, global pool, fc."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), _Block(8),
                          _Block(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])
    return model, lambda m: nn.functional.cross_entropy(m(x), y)


class _Recurrent(nn.Module):
    """An LSTM then a bidirectional GRU; with ``layers=2`` both are stacks with dropout between layers (run layer by
    layer by DoPr)."""

    def __init__(self, layers: int = 1) -> None:
        super().__init__()
        dropout = 0.1 if layers > 1 else 0.0
        self.embed = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 16, num_layers=layers, dropout=dropout, batch_first=True)
        self.gru = nn.GRU(16, 16, num_layers=layers, dropout=dropout, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, 20)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.lstm(self.embed(ids))[0])[0])


def rnn():
    ids = _tokens(20)
    return _Recurrent(), lambda m: nn.functional.cross_entropy(m(ids).flatten(0, 1), ids.flatten())


def rnn_stacks():
    ids = _tokens(20)
    return _Recurrent(layers=2), lambda m: nn.functional.cross_entropy(m(ids).flatten(0, 1), ids.flatten())


class _BCRNN(nn.Module):
    """robomimic's BC-RNN: a conv image encoder per frame, low-dim state concatenated, a 2-layer LSTM, an MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16))
        self.lstm = nn.LSTM(16 + 5, 32, num_layers=2, batch_first=True)
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, images: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        b, t = images.shape[:2]
        features = self.encoder(images.flatten(0, 1)).view(b, t, -1)
        return self.head(self.lstm(torch.cat([features, state], dim=-1))[0])


def bc_rnn():
    g = torch.Generator().manual_seed(0)
    images, state, actions = torch.randn(2, 5, 3, 12, 12, generator=g), torch.randn(2, 5, 5, generator=g), \
        torch.randn(2, 5, 4, generator=g)
    return _BCRNN(), lambda m: (m(images, state) - actions).pow(2).mean()


def conv3d():
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32, 3))
    x = torch.randn(2, 2, 5, 5, 5, generator=torch.Generator().manual_seed(0))
    return model, lambda m: m(x).pow(2).mean()


class _UNet1d(nn.Module):
    """Diffusion-policy style 1D U-Net: strided Conv1d down, ConvTranspose1d up, skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv1d(3, 8, 3, stride=2, padding=1)
        self.mid = nn.Conv1d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose1d(8, 8, 4, stride=2, padding=1)
        self.out = nn.Conv1d(11, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(torch.relu(self.mid(torch.relu(self.down(x)))))
        return self.out(torch.cat([h, x], dim=1))


def unet1d():
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0))
    return _UNet1d(), lambda m: (m(x) - x).pow(2).mean()


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def convnext():
    """ConvNeXt: a patchify stem, depthwise 7x7 convolutions (groups = channels), Linear MLPs."""
    import transformers

    cfg = transformers.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3)
    model, x = transformers.ConvNextForImageClassification(cfg), _images()
    return model, lambda m: m(pixel_values=x, labels=torch.tensor([0, 2])).loss


def mobilenet():
    """MobileNetV2 (timm's MobileNetV3 does not install here): inverted residuals with depthwise 3x3 convolutions."""
    import transformers

    cfg = transformers.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25, num_labels=3)
    model, x = transformers.MobileNetV2ForImageClassification(cfg), _images()
    return model, lambda m: m(pixel_values=x, labels=torch.tensor([0, 2])).loss


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(s))))


class _InvertedResidual(nn.Module):
    """MobileNetV3's block: 1x1 expand, depthwise k x k, squeeze-and-excite, 1x1 project (BatchNorm, hardswish)."""

    def __init__(self, c_in: int, hidden: int, c_out: int, k: int, stride: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.Hardswish())
        self.se = _SqueezeExcite(hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


def mobilenet_v3():
    """torchvision/timm MobileNetV3-small's layer types (hand-written: neither installs here): a hardswish stem,
    inverted residuals with depthwise 3x3/5x5 convolutions and squeeze-and-excite, a Linear classifier head."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
                          _InvertedResidual(16, 16, 16, 3, 2), _InvertedResidual(16, 72, 24, 3, 2),
                          _InvertedResidual(24, 96, 40, 5, 2), _InvertedResidual(40, 240, 40, 5, 1),
                          nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 128), nn.Hardswish(),
                          nn.Linear(128, 3))
    x = _images()
    return model, lambda m: nn.functional.cross_entropy(m(x), torch.tensor([0, 2]))


def efficientnet():
    """EfficientNet-B0's blocks: depthwise convolutions with squeeze-and-excitation (1x1 convolutions)."""
    import transformers

    cfg = transformers.EfficientNetConfig(num_channels=3, image_size=32, width_coefficient=0.25,
                                          depth_coefficient=0.25, hidden_dim=320, num_labels=3)
    model, x = transformers.EfficientNetForImageClassification(cfg), _images()
    return model, lambda m: m(pixel_values=x, labels=torch.tensor([0, 2])).loss


def mamba():
    """Mamba: in/out projections, a depthwise causal Conv1d (read through its weight, squeezed), x/dt projections."""
    import transformers

    cfg = transformers.MambaConfig(vocab_size=64, hidden_size=32, state_size=4, num_hidden_layers=2,
                                   intermediate_size=64, time_step_rank=8)
    model, ids = transformers.MambaForCausalLM(cfg), _tokens(64)
    return model, lambda m: m(input_ids=ids, labels=ids).loss


ZOO: dict[str, Callable] = {"convnext": convnext, "mobilenet": mobilenet, "mobilenet_v3": mobilenet_v3,
                            "efficientnet": efficientnet,
                            "mamba": mamba, "gpt2": gpt2, "llama": llama, "bert": bert, "t5": t5,
                            "lora_llama": lora_llama, "rnn_stacks": rnn_stacks, "bc_rnn": bc_rnn,
                            "unet2d_diffusers": unet2d, "vit_mha": vit_mha, "resnet": resnet, "rnn": rnn,
                            "conv3d": conv3d, "unet1d": unet1d}
HF = {"gpt2", "llama", "bert", "t5", "lora_llama", "convnext", "mobilenet", "efficientnet", "mamba"}
