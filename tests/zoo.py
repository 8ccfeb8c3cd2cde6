"""The model zoo: small versions of public architectures, written the way public code writes them.

Every entry is a :class:`tests.cases.Case` (a seeded model / loss / data factory, float64), shared by
the reference, operator, summary and spectra tests and by the structured-curvature tests. Each runs in
well under a second per product.

* CIFAR ResNets in three coding styles, each in eval and in train mode (BatchNorm batch statistics):
  ``pytorch-cifar`` (``F.relu`` in ``forward``, an empty ``nn.Sequential()`` identity shortcut),
  ``torchvision`` (one ``nn.ReLU(inplace=True)`` reused, in-place ``out += identity``, ``downsample``),
  ``module-per-use`` (one activation module per call site, no in-place ops);
* transformers: ``nn.Embedding`` + ``nn.TransformerEncoderLayer(batch_first=True)`` + mean pooling +
  ``nn.Linear`` (eval: PyTorch's fused fast path; train: the SDPA path), and a GPT-style block with
  causal ``F.scaled_dot_product_attention``, LayerNorm, an MLP and token-level cross-entropy on
  [N, V, T] logits;
* an MLP with LayerNorm, LSTM and GRU classifiers, a module written with functional ops, token-wise
  ``nn.Linear`` on [N, T, D], depthwise / grouped convolutions;
* controls: the MLP and CNN of :mod:`tests.cases`.

Dropout is 0 in the train-mode transformers so that the train-mode code path is exercised while the
model stays a deterministic function (curvature of a random function is not defined).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from curvlab.models.resnet import BasicBlock  # pytorch-cifar's block: F.relu, Sequential() shortcut
from curvlab.models.transformer import CausalSelfAttention  # nanoGPT's: c_attn, causal SDPA
from tests.cases import Case, mlp, small_cnn

__all__ = ["ZOO", "ZOO_BY_NAME", "zoo_case", "zoo_reference"]

CLASSES = 3
VOCAB, SEQ = 7, 5


# ----------------------------------------------------------------------------- ResNets
class CifarResNet(nn.Module):
    def __init__(self, num_classes=CLASSES, width=2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class TorchvisionBasicBlock(nn.Module):
    """torchvision's BasicBlock: one ``nn.ReLU(inplace=True)`` reused, ``out += identity``."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TorchvisionResNet(nn.Module):
    def __init__(self, num_classes=CLASSES, width=2):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(width, 1)
        self.layer2 = self._make_layer(2 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, num_classes)

    def _make_layer(self, planes, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        block = TorchvisionBasicBlock(self.inplanes, planes, stride, downsample)
        self.inplanes = planes
        return nn.Sequential(block)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class ModulePerUseBlock(nn.Module):
    """A residual block with one activation module per call site and no in-place ops."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU()
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.act2(out + identity)


class ModulePerUseResNet(nn.Module):
    def __init__(self, num_classes=CLASSES, width=2):
        super().__init__()
        self.stem = nn.Sequential(conv3x3(3, width), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = ModulePerUseBlock(width, width)
        self.layer2 = ModulePerUseBlock(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.layer2(self.layer1(self.stem(x))))))


# ----------------------------------------------------------------------------- transformers
class EncoderClassifier(nn.Module):
    """``nn.Embedding`` + ``nn.TransformerEncoderLayer(batch_first=True)`` + mean pooling + ``nn.Linear``."""

    def __init__(self, vocab=VOCAB, d_model=8, nhead=2, classes=CLASSES, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.encoder = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=16, dropout=dropout, batch_first=True
        )
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


class GPTBlock(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd)
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class TinyGPT(nn.Module):
    """Token and position embeddings, one GPT block, a final LayerNorm and a language-model head.

    Returns [N, V, T] logits (``nn.CrossEntropyLoss``'s layout for [N, T] token targets).
    """

    def __init__(self, vocab=VOCAB, block_size=SEQ, n_embd=8, n_head=2):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = GPTBlock(n_embd, n_head)
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)

    def forward(self, idx):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        x = self.ln_f(self.h(x))
        return self.lm_head(x).transpose(1, 2)


# ----------------------------------------------------------------------------- others
class TiedLM(nn.Module):
    """GPT-2 style tied embedding / output weights (the weight is also used by F.linear)."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(5, 4)
        self.mix = nn.Linear(4, 4)

    def forward(self, tokens):
        return F.linear(torch.tanh(self.mix(self.wte(tokens))), self.wte.weight).transpose(1, 2)


class RecurrentClassifier(nn.Module):
    """An LSTM or GRU over [N, T, D] features, classified from the last time step."""

    def __init__(self, cell="lstm", features=3, hidden=4, classes=CLASSES):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class FunctionalNet(nn.Module):
    """A forward written with functional ops: ``torch.tanh``, ``x.flatten(1)``, ``x + f(x)``."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 5)
        self.fc3 = nn.Linear(5, CLASSES)

    def forward(self, x):
        h = torch.tanh(self.fc1(x.flatten(1)))
        h = h + torch.sigmoid(self.fc2(h))
        return self.fc3(h)


class TokenwiseMLP(nn.Module):
    """``nn.Linear`` applied to every token of [N, T, D] inputs; outputs [N, T, O]."""

    def __init__(self, features=4, hidden=5, out=2):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def grouped_cnn() -> nn.Module:
    """Depthwise-separable and grouped convolutions (MobileNet / ResNeXt style)."""
    return nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise
        nn.ReLU(),
        nn.Conv2d(4, 6, 1),  # pointwise
        nn.Tanh(),
        nn.Conv2d(6, 6, 3, stride=2, groups=2),  # grouped
        nn.Flatten(),
        nn.Linear(6, CLASSES),
    )


def layernorm_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 6), nn.LayerNorm(6), nn.ReLU(),
        nn.Linear(6, CLASSES),
    )  # fmt: skip


# ----------------------------------------------------------------------------- data
def _images(channels, size, classes=CLASSES):
    return lambda n: (torch.randn(n, channels, size, size), torch.randint(0, classes, (n,)))


def _tokens_to_class(n):
    return torch.randint(0, VOCAB, (n, SEQ)), torch.randint(0, CLASSES, (n,))


def _next_tokens(n):
    tokens = torch.randint(0, VOCAB, (n, SEQ + 1))
    return tokens[:, :-1], tokens[:, 1:]


def _sequences(n):
    return torch.randn(n, 4, 3), torch.randint(0, CLASSES, (n,))


def _tokenwise_regression(n):
    return torch.randn(n, 3, 4), torch.randn(n, 3, 2)


def _flat_binary(n):
    return torch.randn(n, 2, 3), torch.randint(0, 2, (n, CLASSES)).double()


def _vectors(n):
    return torch.randn(n, 4), torch.randint(0, CLASSES, (n,))


def _mode(factory, train: bool):
    def build():
        model = factory()
        return model.train(train)

    return build


def _resnet_cases(name, factory, loss=nn.CrossEntropyLoss):
    return [
        Case(f"{name}-eval", _mode(factory, False), loss, _images(3, 6)),
        Case(f"{name}-train", _mode(factory, True), loss, _images(3, 6)),
    ]


ZOO: list[Case] = [
    *_resnet_cases("resnet-pytorch-cifar", CifarResNet),
    *_resnet_cases("resnet-torchvision", TorchvisionResNet),
    *_resnet_cases("resnet-module-per-use", ModulePerUseResNet),
    Case("transformer-eval", _mode(EncoderClassifier, False), nn.CrossEntropyLoss, _tokens_to_class),
    Case("transformer-train", _mode(EncoderClassifier, True), nn.CrossEntropyLoss, _tokens_to_class),
    Case("gpt-token-ce", _mode(TinyGPT, True), nn.CrossEntropyLoss, _next_tokens),
    Case("layernorm-mlp-ce", layernorm_mlp, nn.CrossEntropyLoss, _vectors),
    Case("lstm-ce", lambda: RecurrentClassifier("lstm"), nn.CrossEntropyLoss, _sequences),
    Case("gru-ce", lambda: RecurrentClassifier("gru"), nn.CrossEntropyLoss, _sequences),
    Case("functional-bce", FunctionalNet, nn.BCEWithLogitsLoss, _flat_binary),
    Case("tokenwise-linear-mse", TokenwiseMLP, nn.MSELoss, _tokenwise_regression),
    Case("grouped-conv-ce", grouped_cnn, nn.CrossEntropyLoss, _images(4, 3)),
    Case("control-mlp-ce", mlp(nn.Tanh, (4, 5, CLASSES)), nn.CrossEntropyLoss, _vectors),
    Case("control-cnn-mse", small_cnn, nn.MSELoss, lambda n: (torch.randn(n, 1, 4, 4), torch.randn(n, 3))),
]

ZOO_BY_NAME = {case.name: case for case in ZOO}


def zoo_case(name: str) -> Case:
    """The zoo entry called ``name`` (see :data:`ZOO`)."""
    return ZOO_BY_NAME[name]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


if __name__ == "__main__":  # a quick inventory: python -m tests.zoo
    for case in ZOO:
        model, loss, x, y = case.build(batch_size=4)
        out = model(x)
        print(f"{case.name:28s} P={num_params(model):5d} out={tuple(out.shape)} loss={loss(out, y):.3f}")


@functools.cache
def zoo_reference(name: str, quantity: str, batch_size: int = 4) -> torch.Tensor:
    """The dense reference ``quantity`` (``"hessian"``, ``"ggn"``, ``"empirical_fisher"``) of zoo entry
    ``name`` at ``batch_size`` (seed 0), computed once per test process: the models are seeded, so every
    ``build`` gives the same matrix. Callers must not modify the result."""
    from curvlab import reference

    model, loss_fn, x, y = ZOO_BY_NAME[name].build(batch_size)
    return getattr(reference, quantity)(model, loss_fn, x, y)
