"""Peak memory of tensor code without running it: shapes only, on PyTorch's ``meta`` device.

A network built on the ``meta`` device has parameters with shapes and no data, and a forward on
meta tensors computes every output's shape and dtype at no cost (an SDXL U-Net forward at 8192²
takes about a second on a CPU). :class:`LiveBytes` watches such a region through a
``TorchDispatchMode``: every tensor an operator allocates adds its storage's bytes while the tensor
is alive (a weak-reference finalizer subtracts them), so ``peak`` is the most bytes the region's
own tensors held at once — the activation working set of the forward, which is what decides
whether a canvas fits a GPU. Views and in-place results allocate nothing and are not counted;
tensors that existed before the region (weights, inputs) are not counted either.

Attention: on meta ``F.scaled_dot_product_attention`` falls back to its math form and would
materialise the L x S score matrix, which no GPU kernel of a large canvas does (flash and
memory-efficient attention keep O(L) memory). Inside the region it is therefore replaced by what
a flash kernel allocates: the output and a float32 log-sum-exp per query.

What this does not see, and a CUDA allocator peak adds: cuDNN / cuBLAS workspaces, the caching
allocator's rounding of blocks (to 512 B; 2 MiB segments for large blocks) and fragmentation, and
memory outside the region (weights, the text encoders, the VAE). It is an estimate to plan a GPU
run with, not a measurement.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["FlashAttentionMemory", "LiveBytes", "module_bytes"]


class FlashAttentionMemory(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` as a flash kernel allocates: the output (query's shape with
    the value's last dimension) and a float32 log-sum-exp per query; no score matrix. Shapes only:
    use it on the meta device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            named = dict(zip(("query", "key", "value"), args), **kwargs)  # diffusers passes them by keyword
            query, value = named["query"], named["value"]
            out = query.new_empty((*query.shape[:-1], value.shape[-1]))
            logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
            del logsumexp  # freed when the kernel returns: counted at its peak, not after
            return out
        return func(*args, **kwargs)


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes() as m: ...`` then ``m.peak`` (bytes), ``m.live`` (still held at the end) and
    ``m.allocations`` (count). See the module docstring."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.allocations = 0
        self._held: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._held.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shared = {_storage_key(a) for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or t._is_view():
                continue
            key = _storage_key(t)
            if key in shared or key in self._held:  # an in-place result, or a view in all but name
                continue
            nbytes = t.untyped_storage().nbytes()
            self._held.add(key)
            self.live += nbytes
            self.allocations += 1
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, key, nbytes)
        return out


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata  # the storage itself (meta storages have no data pointer)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (a shared parameter once)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
