"""EfficientNet-Lite0 definition + the packaged ImageNet weights.

The classification tests are the proof that definition and weights agree: a wrong
padding, activation, block order or normalisation gives confident wrong answers or flat
probabilities. Reference images: scikit-image's ``chelsea`` (a tabby cat) and ``coffee``
(an espresso cup), resized/centre-cropped with Pillow (bicubic), as ImageNet eval does.
What this model predicts (checked when writing the test): chelsea → Egyptian cat 0.38,
tiger cat 0.33, tabby 0.16; coffee → espresso 0.94, cup 0.02.
"""
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from chromabeam.models.efficientnet_lite import (
    EfficientNetLite0,
    _SameConv2d,
    efficientnet_lite0,
    pretrained_weights_path,
)

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968


def imagenet_view(img: np.ndarray, size: int = 224) -> torch.Tensor:
    im = Image.fromarray(img)
    scale = size / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def model():
    return efficientnet_lite0(pretrained=True)


@pytest.fixture(scope="module")
def probs(model):
    x = torch.cat([imagenet_view(skimage.data.chelsea()), imagenet_view(skimage.data.coffee())])
    with torch.inference_mode():
        return model(x).softmax(-1)


def test_cat_is_classified_as_a_cat(probs):
    top5 = probs[0].topk(5).indices.tolist()
    assert set(top5[:3]) <= CATS, top5  # the three best guesses are all domestic cats
    assert probs[0, sorted(CATS)].sum() > 0.7


def test_coffee_is_classified_as_espresso(probs):
    top5 = probs[1].topk(5).indices.tolist()
    assert top5[0] == ESPRESSO and CUP in top5, top5
    assert probs[1, ESPRESSO] > 0.8


def test_returned_in_eval_mode_and_deterministic(model):
    assert not model.training
    x = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(x), model(x))


def test_feature_and_pyramid_shapes_at_odd_sizes(model):
    x = torch.rand(1, 3, 129, 67)
    with torch.inference_mode():
        feats = model.features(x)
        pyr = model.pyramid(x)
    # TF "SAME": every stride-2 stage gives ceil(n / 2): 129→65→33→17→9→5, 67→34→17→9→5→3
    assert feats.shape == (1, 1280, 5, 3)
    assert [tuple(p.shape[1:]) for p in pyr] == [(24, 33, 17), (40, 17, 9), (112, 9, 5), (1280, 5, 3)]
    torch.testing.assert_close(pyr[-1], feats)


def test_same_padding_follows_tensorflow():
    # TF 'SAME', stride 2, k=3 on 4×4: output 2×2; total padding 1, all of it bottom/right.
    conv = _SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = conv(x)[0, 0]
    a = x[0, 0].numpy()
    expect = [[a[0:3, 0:3].sum(), a[0:3, 2:4].sum()], [a[2:4, 0:3].sum(), a[2:4, 2:4].sum()]]
    np.testing.assert_array_equal(out.detach().numpy(), np.array(expect, dtype=np.float32))


def test_headless_model_has_same_features(model):
    headless = efficientnet_lite0(pretrained=True, include_top=False)
    assert not any(k.startswith("_fc.") for k in headless.state_dict())
    x = torch.rand(1, 3, 96, 80)
    with torch.inference_mode():
        torch.testing.assert_close(headless.features(x), model.features(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="without a classifier"):
        headless(x)


def test_loading_is_strict(tmp_path):
    state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)

    extra = dict(state, **{"_blocks.99._project_conv.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys \['_blocks\.99\._project_conv\.weight'\]"):
        efficientnet_lite0(weights_path=str(tmp_path / "extra.pth"))

    missing = {k: v for k, v in state.items() if k != "_bn1.running_var"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing keys \['_bn1\.running_var'\]"):
        efficientnet_lite0(weights_path=str(tmp_path / "missing.pth"))

    shaped = dict(state, **{"_fc.weight": torch.zeros(10, 1280)})
    torch.save(shaped, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"_fc\.weight: file \(10, 1280\) vs model \(1000, 1280\)"):
        efficientnet_lite0(weights_path=str(tmp_path / "shape.pth"))

    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        efficientnet_lite0(weights_path=str(tmp_path / "list.pth"))


def test_weights_are_read_with_the_safe_unpickler(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.mkdir, (str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        efficientnet_lite0(weights_path=str(tmp_path / "evil.pth"))
    assert not (tmp_path / "pwned").exists()


def test_rejects_bad_input(model):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.features(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="float"):
        model.features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_trainable_gradients_reach_the_stem():
    net = EfficientNetLite0(num_classes=0).train()
    feats = net.features(torch.rand(2, 3, 64, 64))
    F.relu(feats).mean().backward()
    assert net._conv_stem.weight.grad is not None and net._conv_stem.weight.grad.abs().sum() > 0
