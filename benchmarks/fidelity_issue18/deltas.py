"""The ScaleDiff deltas of issue 18 (items 7 and 8): what changed, by how much.

7. NPA query shift: one FLUX double-stream attention (tiny random-weight FLUX, a 16x16 token grid
   over an 8x8 native one, offsets forced to 0) with the official padded layout (a whole extra patch
   per axis: 5x5 patches) against the earlier minimal tiling (4x4 patches; the all-padding row and
   column dropped). Image outputs agree; the text output (a mean over the patches) does not.
8. The restart index: steps re-run by the official ``int(N·(1 − r))`` (now, every family) and by the
   earlier img2img rules (U-Nets ``int(N·r)``, SD3/FLUX ``N − int(N − N·r)``); and FLUX.1's σ at
   the restart index of a 2:1 target, whose base has 2048 tokens (earlier: the shift of the base's
   own token count; now: pinned at the native 4096, as the official code).

    PYTHONPATH=. python benchmarks/fidelity_issue18/deltas.py
"""

from __future__ import annotations

import numpy as np
import torch

from anysize.models import adapt
from anysize.models.dit import _flow_shift_mu
from anysize.patches.npa import NPAPatch, neighborhood_indices
from anysize.schedulers import make_scheduler
from anysize.testing import tiny_pipeline


@torch.no_grad()
def npa_text_delta() -> dict:
    adapter = adapt(tiny_pipeline("flux"), native_size=16)
    net = adapter.network
    attn = net.transformer_blocks[0].attn
    H = W = 16
    lt = 3
    g = torch.Generator().manual_seed(0)
    dim = attn.to_q.in_features
    x, c = torch.randn(1, H * W, dim, generator=g), torch.randn(1, lt, dim, generator=g)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(H).float(), torch.arange(W).float(),
                                     indexing="ij"), -1).reshape(-1, 3)
    rope = net.pos_embed(torch.cat([torch.zeros(lt, 3), ids]))
    out = {}
    with NPAPatch(adapter, shift=True) as patch:
        patch.token_grid, patch.text_len = (H, W), lt
        patch.plan = lambda tokens, batch: ((H, W), (8, 8), [(0, 0)] * batch)  # every offset 0
        out["official"] = attn(x, encoder_hidden_states=c, image_rotary_emb=rope)
        full = neighborhood_indices((H, W), (8, 8), (0, 0))
        keep = [i for i in range(full.patches) if (full.query[i] >= 0).any()]
        minimal = full._replace(query=full.query[keep], kv=full.kv[keep], corners=[full.corners[i] for i in keep])
        flat = minimal.query.flatten()
        slots = (flat >= 0).nonzero().flatten()
        inverse = torch.empty(H * W, dtype=torch.long)
        inverse[flat[slots]] = slots
        minimal = minimal._replace(inverse=inverse)
        patch.layout = lambda grid, window, offset, device: minimal
        out["minimal"] = attn(x, encoder_hidden_states=c, image_rotary_emb=rope)
    (img_a, txt_a), (img_b, txt_b) = out["official"], out["minimal"]
    return {"patches": [full.patches, len(keep)], "image_max_abs_diff": float((img_a - img_b).abs().max()),
            "text_max_abs_diff": float((txt_a - txt_b).abs().max()), "text_max_abs": float(txt_a.abs().max())}


def restart_table() -> list[tuple]:
    rows = []
    for n, r in [(10, 0.8), (30, 0.8), (50, 0.9), (60, 0.55), (3, 0.4), (7, 0.4), (50, 0.4), (30, 0.6)]:
        rows.append((n, r, n - int(n * (1 - r)), int(n * r), n - int(max(n - min(n * r, n), 0))))
    return rows


def flux_sigma_at_restart() -> dict:
    adapter = adapt(tiny_pipeline("flux"))  # FLUX.1's geometry: native 1024² = 4096 tokens
    out = {}
    for tokens in (4096, 2048):
        s = make_scheduler(adapter)
        mu = _flow_shift_mu(s, tokens, 1.15)
        s.set_timesteps(sigmas=np.linspace(1.0, 1 / 30, 30), mu=mu)
        out[tokens] = (mu, float(s.sigmas[12]))
    return out


def main() -> None:
    print("item 7, NPA query shift with offset 0 (official padded layout vs minimal tiling):", npa_text_delta())
    print("item 8, steps re-run: N, restart, official (now), U-Net img2img (before), SD3/FLUX img2img (before)")
    for row in restart_table():
        print("   ", row)
    sig = flux_sigma_at_restart()
    print(f"item 8, FLUX.1 2:1 target, 30 steps, restart 0.6: base pass mu {sig[2048][0]:.4f} -> {sig[4096][0]:.4f}, "
          f"σ at the restart index {sig[2048][1]:.4f} -> {sig[4096][1]:.4f} (official 0.826)")


if __name__ == "__main__":
    main()
