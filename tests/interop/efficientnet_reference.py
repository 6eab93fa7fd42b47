"""An independent EfficientNet-Lite0/Lite1 reference in plain Python, to check Linesight's candle port.

Reads the legacy .pth with Python's own pickle (not Linesight's reader), runs the network up to
its stride-8 features (Lite0: block 4; Lite1: block 6) on a small deterministic image, with batch norm applied
unfolded, and prints the stride-8 feature map as JSON. Slow, exact, and sharing no code with
the Rust implementation.

Usage: efficientnet_reference.py PTH SIZE [lite0|lite1]
The input pixel at (y, x) is (y * 7 + x * 13) % 256 in all three channels, scaled (p - 127) / 128.
"""

import array
import collections
import itertools
import json
import math
import pickle
import struct
import sys

# (expand, kernel, stride, in, out) up to stride 8, from the EfficientNet paper's B0 table; Lite1
# repeats stages 2 and 3 three times instead of twice (depth x 1.1, rounded up).
BLOCKS = {
    "lite0": [(1, 3, 1, 32, 16), (6, 3, 2, 16, 24), (6, 3, 1, 24, 24), (6, 5, 2, 24, 40), (6, 5, 1, 40, 40)],
    "lite1": [(1, 3, 1, 32, 16), (6, 3, 2, 16, 24), (6, 3, 1, 24, 24), (6, 3, 1, 24, 24),
              (6, 5, 2, 24, 40), (6, 5, 1, 40, 40), (6, 5, 1, 40, 40)],
}
EPS = 1e-3


def load(path):
    f = open(path, "rb")

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return pid

        def find_class(self, module, name):
            if name == "_rebuild_tensor_v2":
                return lambda *a: ("T",) + a[:4]
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            return name

    u = Unpickler(f)
    for _ in range(3):
        u.load()
    state, keys = u.load(), u.load()
    kinds = {v[1][2]: v[1][1] for v in state.values() if isinstance(v, tuple) and v[0] == "T"}
    data = {}
    for key in keys:
        (n,) = struct.unpack("<q", f.read(8))
        data[key] = f.read(n * (8 if "Long" in kinds[key] else 4))

    def tensor(name):
        _, pid, offset, shape, stride = state[name]
        values = array.array("f")
        values.frombytes(data[pid[2]])
        flat = [values[offset + sum(i * s for i, s in zip(idx, stride))] for idx in itertools.product(*[range(s) for s in shape])]
        return shape, flat

    return tensor


def same_pad(n, k, s):
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2


def conv(x, c_in, h, w, weight, shape, stride, groups):
    c_out, per_group, k, _ = shape
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    top, left = same_pad(h, k, stride), same_pad(w, k, stride)
    out = [0.0] * (c_out * ho * wo)
    out_per_group = c_out // groups
    for co in range(c_out):
        g = co // out_per_group
        for oy in range(ho):
            for ox in range(wo):
                acc = 0.0
                for ci in range(per_group):
                    cin = g * per_group + ci
                    for ky in range(k):
                        iy = oy * stride + ky - top
                        if iy < 0 or iy >= h:
                            continue
                        for kx in range(k):
                            ix = ox * stride + kx - left
                            if 0 <= ix < w:
                                acc += weight[((co * per_group + ci) * k + ky) * k + kx] * x[(cin * h + iy) * w + ix]
                out[(co * ho + oy) * wo + ox] = acc
    return out, c_out, ho, wo


def batch_norm(x, c, hw, tensor, prefix, relu6):
    gamma, beta = tensor(prefix + ".weight")[1], tensor(prefix + ".bias")[1]
    mean, var = tensor(prefix + ".running_mean")[1], tensor(prefix + ".running_var")[1]
    out = []
    for ch in range(c):
        scale = gamma[ch] / math.sqrt(var[ch] + EPS)
        for v in x[ch * hw:(ch + 1) * hw]:
            y = (v - mean[ch]) * scale + beta[ch]
            out.append(min(max(y, 0.0), 6.0) if relu6 else y)
    return out


def main(path, size, variant):
    tensor = load(path)
    plane = [((y * 7 + x * 13) % 256 - 127) / 128 for y in range(size) for x in range(size)]
    x, c, h, w = plane * 3, 3, size, size
    shape, weight = tensor("_conv_stem.weight")
    x, c, h, w = conv(x, c, h, w, weight, shape, 2, 1)
    x = batch_norm(x, c, h * w, tensor, "_bn0", True)
    for i, (expand, k, stride, c_in, c_out) in enumerate(BLOCKS[variant]):
        p = f"_blocks.{i}"
        inputs = x
        if expand != 1:
            shape, weight = tensor(p + "._expand_conv.weight")
            x, c, h, w = conv(x, c, h, w, weight, shape, 1, 1)
            x = batch_norm(x, c, h * w, tensor, p + "._bn0", True)
        shape, weight = tensor(p + "._depthwise_conv.weight")
        x, c, h, w = conv(x, c, h, w, weight, shape, stride, c)
        x = batch_norm(x, c, h * w, tensor, p + "._bn1", True)
        shape, weight = tensor(p + "._project_conv.weight")
        x, c, h, w = conv(x, c, h, w, weight, shape, 1, 1)
        x = batch_norm(x, c, h * w, tensor, p + "._bn2", False)
        if stride == 1 and c_in == c_out:
            x = [a + b for a, b in zip(x, inputs)]
    print(json.dumps({"shape": [c, h, w], "values": x}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "lite0")
