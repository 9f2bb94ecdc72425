"""Test-only stand-in for torchvision, so ``import timm`` works where no torchvision fits torch.

timm imports torchvision at import time (data transforms, ``FrozenBatchNorm2d``), though
nothing the tests use (ViT construction and forward) calls it. The dev/CI venv pins the CPU
build of torch 2.13.0, and the only torchvision for it in the package registry (0.28.0) is
built against torch's CUDA libraries and fails to import beside the CPU torch ("operator
torchvision::nms does not exist"). So scripts/setup-dev.sh installs timm without
torchvision, and tests/conftest.py calls ``install()``, which does nothing when a working
torchvision imports and otherwise serves every ``torchvision.*`` module as a stub: any
attribute is a placeholder class (so timm's module-level ``class X(transforms.ToTensor)``
and ``InterpolationMode.BILINEAR`` dict keys work), and instantiating one raises.

Library code never uses this; users install timm with a torchvision that matches their torch.
"""

import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder(type):
    """A class standing for a torchvision name; its attributes are placeholders too."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"torchvision.{cls.__qualname__} is a test stub (tests/_torchvision_stub.py): "
                           "no torchvision matching this torch is installed")


_PLACEHOLDERS = {}


def _placeholder(qualname):
    if qualname not in _PLACEHOLDERS:
        cls = _Placeholder(qualname.rsplit(".", 1)[-1], (), {"__module__": "torchvision"})
        cls.__qualname__ = qualname
        _PLACEHOLDERS[qualname] = cls
    return _PLACEHOLDERS[qualname]


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{self.__name__.partition('.')[2] or 'torchvision'}.{name}".lstrip("."))


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        if spec.name == "torchvision":
            module.__version__ = "0.0.0+adaptkern.test.stub"
        return module

    def exec_module(self, module):
        pass


def install() -> bool:
    """Serve torchvision from the stub if the real one is missing or fails to import.
    Returns True when the stub is in use."""
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:  # noqa: BLE001 - ImportError, or RuntimeError from a torch/torchvision mismatch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    sys.meta_path.insert(0, _StubFinder())
    return True
