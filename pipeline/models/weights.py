"""Starting weights the user already has: a plain state_dict, a torchvision weights file, a compress
checkpoint, a training script's checkpoint (the state_dict under ``model_state_dict``, ``model``, ``net`` and
the like, beside the optimizer), or ``DEFAULT`` (torchvision's pretrained weights, downloaded by torchvision).
A whole pickled model (``torch.save(model)``) is refused with how to save its state_dict instead: loading it
would mean unpickling arbitrary code, and every load here is ``weights_only=True``.

Tensors are matched by name after the prefix differences we know of (our torchvision wrapper keeps the net
under ``net.``; DDP adds ``module.``, torch.compile ``_orig_mod.``). NaN or infinite values are refused. Two
mismatches are expected and repaired, and logged:
a classifier of another class count is left at its fresh initialisation, and a first conv of another
input-channel count is adapted (summed to one channel, or the RGB mean repeated, scaled to keep the
activation's magnitude). Anything else that does not fit means the file is for another architecture.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import UserError


def _classifier_keys(model: nn.Module) -> set[str]:
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return {f"{name}.weight", f"{name}.bias"}


def _first_conv_key(model: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"


NESTED = ("state_dict", "model_state_dict", "model", "net", "state_dict_ema", "model_ema", "ema")
HOW = "give a file saved with torch.save(model.state_dict(), path)"


def read_state(source: str, arch: str, field: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors in ``source``; a compress checkpoint of another architecture is refused. ``field`` is the
    config key the path came from, named in every error."""
    if source == "DEFAULT":
        import torchvision

        try:
            return torchvision.models.get_model_weights(_builder(arch)).DEFAULT.get_state_dict(progress=False)
        except ValueError as exc:
            raise UserError(f"{field}: DEFAULT means torchvision's pretrained weights, which {arch} has none of; "
                            "give a file path instead") from exc
        except OSError as exc:
            raise UserError(f"{field}: DEFAULT could not download torchvision's {arch} weights ({exc}); "
                            "download the file elsewhere and give its path") from exc
    path = Path(source).expanduser()
    if path.is_dir():
        raise UserError(f"{field}: {path} is a folder; give the weights file in it")
    if not path.is_file():
        raise UserError(f"{field}: {path} does not exist; fix the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-checkpoint or damaged file
        if "Unsupported global" in str(exc) and "numpy" in str(exc):
            raise UserError(f"{field}: {path} holds numpy arrays; save torch tensors instead "
                            f"(torch.from_numpy), or {HOW}") from exc
        if "Unsupported global" in str(exc):  # torch.save(model): a pickled nn.Module, which could run any code
            raise UserError(f"{field}: {path} holds a whole pickled model, which compress does not unpickle "
                            f"(weights_only=True); load it where it was made and {HOW}") from exc
        raise UserError(f"{field}: {path} is not a PyTorch state_dict or checkpoint ({type(exc).__name__}); "
                        f"{HOW}") from exc
    if isinstance(obj, dict) and "arch" in obj and "state_dict" in obj and obj["arch"] != arch:
        raise UserError(f"{field}: {path} is a compress checkpoint of a {obj['arch']}, not a {arch}; "
                        f"set {_key(field, 'arch')}: {obj['arch']} or give weights for a {arch}")
    return _tensors(obj, f"{field}: {path}")


def _key(field: str, name: str) -> str:
    """'teacher.weights' -> 'teacher.arch': the config key beside the weights path."""
    return field.rpartition(".")[0] + "." + name if "." in field else name


def _is_state(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _tensors(obj, where: str) -> dict[str, torch.Tensor]:
    """The state_dict in a loaded file: the file itself, or a training checkpoint's entry holding it (the
    usual names first, else the only dict of tensors in it)."""
    if _is_state(obj):
        return obj
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{where} holds {'an empty dict' if obj == {} else 'a ' + type(obj).__name__}, not a "
                        f"state_dict; {HOW}")
    for key in NESTED:
        if _is_state(obj.get(key)):
            return obj[key]
    found = [k for k, v in obj.items() if _is_state(v)]
    if len(found) == 1:
        return obj[found[0]]
    if found:
        raise UserError(f"{where} holds several state_dicts ({', '.join(map(str, found))}); {HOW}")
    raise UserError(f"{where} holds no state_dict (a dict of tensors); its keys are "
                    f"{', '.join(map(str, list(obj)[:8]))}; {HOW}")


def _renamed(state: dict, wanted: set[str]) -> dict:
    """The state with the key prefix that matches the most of ``wanted``: our torchvision wrapper's ``net.``,
    DDP's ``module.``, torch.compile's ``_orig_mod.``, or ``model.`` (a compress last.pt's training task)."""
    best = state
    for strip, add in itertools.product(("", "module.", "model.", "net.", "_orig_mod."), ("", "net.")):
        cand = {(add + k[len(strip):] if k.startswith(strip) else k): v for k, v in state.items()}
        if len(wanted & cand.keys()) > len(wanted & best.keys()):
            best = cand
    return best


def adapt_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first-conv kernel for ``channels`` inputs from one trained for ``weight.shape[1]``."""
    if channels == 1:
        return weight.sum(1, keepdim=True)
    mean = weight.mean(1, keepdim=True)
    return mean.repeat(1, channels, 1, 1) * (weight.shape[1] / channels)


def _builder(arch: str) -> str:
    """The torchvision net a registered variant is built from (mobilenet_v3_small_relu -> mobilenet_v3_small)."""
    from pipeline.models.torchvision_nets import TABLE

    row = TABLE.get(arch)
    return (row.builder if row else "") or arch


def load_into(model: nn.Module, source: str, arch: str, log=print, field: str = "weights") -> set[str]:
    """Load ``source`` into ``model``; returns the names of the parameters that came from the file."""
    target = model.state_dict()
    raw = read_state(source, arch, field)
    bad = next((k for k, v in raw.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise UserError(f"{field}: {source} hold NaN or infinite values (e.g. {bad}), as a diverged training run "
                        "leaves; give weights saved before it diverged")
    state = _renamed(raw, set(target))
    head, conv = _classifier_keys(model), _first_conv_key(model)
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in target]
    if source == "DEFAULT" and extra and _builder(arch) != arch:  # a variant without some of its base's layers
        log(f"weights: {len(extra)} tensors of torchvision's {_builder(arch)} that {arch} has no layer for left out")
        state, extra = {k: v for k, v in state.items() if k in target}, []
    if missing or extra:
        raise UserError(f"{field}: {source} do not fit a {arch}: {len(missing)} tensors missing (e.g. "
                        f"{(missing or ['-'])[0]}), {len(extra)} unknown (e.g. {(extra or ['-'])[0]}); "
                        f"they are for another architecture: set {_key(field, 'arch')} to the one they were trained as")
    loaded, reset = {}, []
    for key, value in state.items():
        want = target[key].shape
        if value.shape == want:
            loaded[key] = value
        elif key in head:
            reset.append(key)
        elif key == conv and value.shape[0] == want[0] and value.shape[2:] == want[2:]:
            loaded[key] = adapt_channels(value, want[1])
            log(f"weights: first conv adapted from {value.shape[1]} to {want[1]} input channels")
        else:
            raise UserError(f"{field}: {source} do not fit a {arch}: {key} is {tuple(value.shape)}, "
                            f"the model's is {tuple(want)}; set {_key(field, 'arch')} and {_key(field, 'width')} to "
                            "those they were trained at")
    if reset:
        log(f"weights: classifier re-initialised ({state[sorted(reset)[-1]].shape[0]} classes in the file, "
            f"{target[sorted(reset)[-1]].shape[0]} here)")
    model.load_state_dict(loaded, strict=False)
    params = {n for n, _ in model.named_parameters()}
    return {k for k in loaded if k in params}
