"""Lets a CUDA build of torchvision import beside a CPU build of torch (the captioning environment).

The torchvision wheels reachable for vLLM's CPU torch are CUDA builds: their C++ operators do not
load, and torchvision's import then fails registering fake kernels for `torchvision::nms`/`qnms`.
Defining those two schemas first lets the Python side (image and video transforms, which the Qwen-VL
processors use) import. Installed as a .pth hook by the Makefile, so vLLM's engine processes get it
too; it acts only at the first `import torchvision`, and only when torch is a CPU build.
"""

import importlib.abc
import sys

_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


class _DefineOperatorsFirst(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            define_missing_operators()
        return None  # the regular finders load torchvision


def define_missing_operators():
    import torch

    if torch.version.cuda is not None:
        return  # a CUDA torch loads torchvision's own operators
    for op, schema in _SCHEMAS.items():
        if not hasattr(torch.ops.torchvision, op):
            torch.library.define(f"torchvision::{op}", schema)


def install():
    if "torchvision" not in sys.modules:
        sys.meta_path.insert(0, _DefineOperatorsFirst())
