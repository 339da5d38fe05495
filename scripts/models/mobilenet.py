"""torchvision MobileNetV2 (width 1.0, ImageNet) as a MIL program + a numpy reference.

Architecture (torchvision.models.mobilenet_v2, weights mobilenet_v2-b0353104.pth):
    features.0   conv 3x3 s2 3->32 (no bias) + BN + ReLU6
    features.1-17 inverted residual blocks (t, c, n, s) =
        (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1)
        [expand 1x1 conv+BN+ReLU6 if t != 1] -> depthwise 3x3 (groups=hidden, pad 1)+BN+ReLU6
        -> project 1x1 conv + BN; residual add when stride 1 and in == out
    features.18  conv 1x1 320->1280 + BN + ReLU6
    adaptive avg pool (reduce_mean over H, W) -> flatten -> dropout (omitted: eval) ->
    classifier.1 linear 1280->1000
All BNs use eps 1e-5 and follow a conv directly (coremltools folds them into the conv).
"""

from __future__ import annotations

import numpy as np

import npref

BN_EPS = 1e-5
SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# The few ImageNet-1k class names we need to name a cat photo's prediction (torchvision order).
IMAGENET_LABELS = {
    280: "grey fox", 281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
    285: "Egyptian cat", 286: "cougar", 287: "lynx",
}
CAT_CLASSES = {281, 282, 283, 284, 285}


def layers():
    """Ordered conv layers: dicts with prefix (state_dict key of conv / bn), shapes, stride,
    groups, act (relu6 or None) and residual markers."""
    out = []

    def conv(conv_key, bn_key, cin, cout, k, s, groups, act):
        out.append(dict(conv=conv_key, bn=bn_key, cin=cin, cout=cout, k=k, stride=s, groups=groups, act=act,
                        pad=(k - 1) // 2))

    conv("features.0.0", "features.0.1", 3, 32, 3, 2, 1, True)
    blocks = []
    inp, idx = 32, 1
    for t, c, n, s in SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = inp * t
            start = len(out)
            p = f"features.{idx}.conv"
            if t != 1:
                conv(f"{p}.0.0", f"{p}.0.1", inp, hidden, 1, 1, 1, True)
                conv(f"{p}.1.0", f"{p}.1.1", hidden, hidden, 3, stride, hidden, True)
                conv(f"{p}.2", f"{p}.3", hidden, c, 1, 1, 1, False)
            else:
                conv(f"{p}.0.0", f"{p}.0.1", hidden, hidden, 3, stride, hidden, True)
                conv(f"{p}.1", f"{p}.2", hidden, c, 1, 1, 1, False)
            blocks.append(dict(index=idx, first=start, last=len(out) - 1, residual=(stride == 1 and inp == c)))
            inp = c
            idx += 1
    conv("features.18.0", "features.18.1", 320, 1280, 1, 1, 1, True)
    return out, blocks


def params_original(sd):
    """Unfolded parameters from the torchvision state_dict: per conv (w, None, bn tuple)."""
    convs, _ = layers()
    P = {"convs": [], "fc": (sd["classifier.1.weight"], sd["classifier.1.bias"])}
    for L in convs:
        bn = L["bn"]
        P["convs"].append((sd[f"{L['conv']}.weight"], None,
                           (sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"], BN_EPS)))
    return P


def params_from_spec(op_list):
    """Folded parameters as the saved program holds them: per conv (w, b, None)."""
    convs = [p for t, _, p in op_list if t == "conv"]
    lins = [p for t, _, p in op_list if t == "linear"]
    assert not any(t == "batch_norm" for t, _, _ in op_list), "expected every batch_norm folded into its conv"
    L, _ = layers()
    assert len(convs) == len(L) and len(lins) == 1, (len(convs), len(lins))
    for spec_conv, l in zip(convs, L):
        assert tuple(spec_conv["weight"].shape) == (l["cout"], l["cin"] // l["groups"], l["k"], l["k"])
        assert int(spec_conv["groups"]) == l["groups"]
    return {"convs": [(c["weight"], c["bias"], None) for c in convs], "fc": (lins[0]["weight"], lins[0]["bias"])}


def forward(P, image, act=lambda a: a):
    convs, blocks = layers()
    block_of_first = {b["first"]: b for b in blocks}
    x = npref.f64(image)
    block_in = None
    for i, L in enumerate(convs):
        if i in block_of_first:
            block_in = x
        w, b, bn = P["convs"][i]
        x = act(npref.conv2d(x, w, b, stride=(L["stride"],) * 2, pad=(L["pad"],) * 4, groups=L["groups"]))
        if bn is not None:
            x = act(npref.batch_norm(x, *bn))
        if L["act"]:
            x = act(npref.relu6(x))
        for blk in blocks:
            if blk["last"] == i and blk["residual"]:
                x = act(x + block_in)
    x = act(np.mean(x, axis=(2, 3)))
    return act(npref.linear(x, *P["fc"]))


def build_program(P, mb, types, target):
    """MIL program from unfolded params P (conv weight, BN separately: coremltools folds)."""
    convs, blocks = layers()
    block_of_first = {b["first"]: b for b in blocks}

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 224, 224), dtype=types.fp32)], opset_version=target)
    def prog(image):
        x = image
        block_in = None
        for i, L in enumerate(convs):
            if i in block_of_first:
                block_in = x
            w, _, (mean, var, gamma, beta, eps) = P["convs"][i]
            name = L["conv"].replace(".", "_")
            x = mb.conv(x=x, weight=mb.const(val=w, name=f"{name}_weight"), strides=[L["stride"]] * 2, pad_type="custom",
                        pad=[L["pad"]] * 4, groups=L["groups"], name=name)
            x = mb.batch_norm(x=x, mean=mean, variance=var, gamma=gamma, beta=beta, epsilon=eps,
                              name=L["bn"].replace(".", "_"))
            if L["act"]:
                x = mb.relu6(x=x, name=f"{name}_relu6")
            for blk in blocks:
                if blk["last"] == i and blk["residual"]:
                    x = mb.add(x=x, y=block_in, name=f"features_{blk['index']}_add")
        x = mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True, name="avgpool")
        x = mb.reshape(x=x, shape=[1, 1280], name="flatten")
        w, b = P["fc"]
        return mb.linear(x=x, weight=mb.const(val=w, name="classifier_1_weight"),
                         bias=mb.const(val=b, name="classifier_1_bias"), name="logits")

    return prog


def preprocess(png_path):
    """torchvision ImageNet eval transform on a PIL image: Resize(256) (bilinear, PIL's
    antialiasing filter), CenterCrop(224), ToTensor (/255), Normalize(mean, std).
    Returns float32 [1,3,224,224] and a description."""
    from PIL import Image

    img = Image.open(png_path).convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = 256, int(256 * h / w)
    else:
        nh, nw = 256, int(256 * w / h)
    img = img.resize((nw, nh), Image.BILINEAR)
    top = int(round((nh - 224) / 2.0))
    left = int(round((nw - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)  # HWC
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    x = np.ascontiguousarray(arr.transpose(2, 0, 1)[None]).astype(np.float32)
    desc = (f"RGB {w}x{h} -> PIL bilinear resize to {nw}x{nh} (shorter side 256) -> center crop 224 at "
            f"(left {left}, top {top}) -> /255 -> (x - mean) / std in float32 with ImageNet mean [0.485, 0.456, 0.406] "
            f"std [0.229, 0.224, 0.225] -> NCHW float32 [1,3,224,224]")
    return x, desc
