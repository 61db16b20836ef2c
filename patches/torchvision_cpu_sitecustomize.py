"""Installed as the venv's sitecustomize.py by scripts/setup.sh, on CPU torch builds only (ledger: patches/README.md).

PyPI torchvision wheels are CUDA-linked. With torch 2.13.0+cpu their _C.so cannot load and
torchvision/_meta_registrations.py then fails on its unguarded register_fake("torchvision::nms") with
"RuntimeError: operator torchvision::nms does not exist"; SGLang imports torchvision at module level.
Define the two op schemas right before torchvision is first imported, in every interpreter (sitecustomize also
runs in SGLang's spawned scheduler and detokenizer processes). torchvision's Python parts then work; its C++ ops
do not, and SGLang's text path never calls them.
"""
import importlib.abc
import sys


class _TorchvisionCpuShim(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        if torch.version.cuda is None:
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                try:
                    lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                except RuntimeError:  # already defined (a real torchvision build loaded first)
                    pass
            sys.modules["_jetspec_torchvision_cpu_shim_lib"] = lib  # keep the library alive
        return None  # the normal finders import torchvision


sys.meta_path.insert(0, _TorchvisionCpuShim())
