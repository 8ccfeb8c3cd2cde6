"""Model presets: shapes, the ResNet's and GPT's structure as public code has it, and the input checks."""

import pytest
import torch

import curvlab
from curvlab.models import GPT, build_model, resnet


@pytest.mark.parametrize("depth, blocks", [(8, 1), (20, 3), (32, 5)])
def test_resnet_depth_is_6n_plus_2(depth, blocks):
    net = resnet(3, 10, depth=depth, width=4)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3×3 convolutions plus the classifier: the layers a depth counts
    assert len(net.layer2) == blocks and net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        resnet(depth=depth + 1)


def test_resnet_batchnorm_couples_the_batch_in_train_mode_only():
    torch.manual_seed(0)
    net = resnet(1, 10, depth=8, width=4).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    changed = x.clone()
    changed[1:] += 1.0
    for train, coupled in ((True, True), (False, False)):
        net.train(train)
        with torch.no_grad():
            differs = not torch.allclose(net(x)[0], net(changed)[0])
        assert differs == coupled


def test_gpt_logits_are_causal_in_cross_entropy_layout():
    torch.manual_seed(0)
    gpt = GPT(vocab_size=9, block_size=6, n_layer=2, n_head=2, n_embd=8).double()
    tokens = torch.randint(0, 9, (3, 6))
    logits = gpt(tokens)
    assert logits.shape == (3, 9, 6)  # [N, V, T] for targets [N, T]
    later = tokens.clone()
    later[:, 4:] = (later[:, 4:] + 1) % 9
    assert torch.allclose(gpt(later)[..., :4], logits[..., :4])  # no position sees the future
    assert not torch.allclose(gpt(later)[..., 4:], logits[..., 4:])
    with pytest.raises(ValueError, match="block size is 6"):
        gpt(torch.zeros(1, 7, dtype=torch.long))


@pytest.mark.parametrize("name, shape, culprit", [("resnet", (64,), "images"), ("transformer", (1, 8, 8), "tokens"),
                                                  ("lenet", (32,), "images"), ("nosuch", (3,), "unknown model")])
def test_build_model_names_the_expected_inputs(name, shape, culprit):
    with pytest.raises(ValueError, match=culprit):
        build_model(name, shape, 10)


def test_text_data_predicts_the_next_character():
    data = curvlab.load_dataset("text", seed=0)
    x, y = data.train
    assert x.dtype == y.dtype == torch.long and x.shape[1] == curvlab.datasets.TEXT_BLOCK
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one character
    assert 0 <= int(x.min()) and int(max(x.max(), y.max())) < data.num_outputs
    assert len(data.test[0]) > 0 and data.sample_shape == (curvlab.datasets.TEXT_BLOCK,)
    again = curvlab.load_dataset("text", seed=0)
    assert torch.equal(again.train[0], x) and not torch.equal(curvlab.load_dataset("text", seed=1).train[0], x)
