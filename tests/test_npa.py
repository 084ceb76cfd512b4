"""Neighborhood Patch Attention: geometry, the attention core, each family's processor against the
stock diffusers processor run on the same neighbourhoods, and patch/unpatch exactness."""

import random

import pytest
import torch
import torch.nn.functional as F

import anysize
from anysize.errors import InvalidArgumentError
from anysize.models import adapt
from anysize.patches.npa import NPAPatch, axis_plan, neighborhood_indices, npa_attention

FAMILIES = ["sd1", "sd2", "sdxl", "sd3", "flux"]


# ------------------------------------------------------------------------------ geometry


def test_axis_plan_interior_patches_sit_in_the_middle_of_their_window():
    patch, starts, corners = axis_plan(16, 8)  # 2x a window of 8: patches of 4, windows of 8
    assert patch == 4
    assert starts == [0, 4, 8, 12]
    assert corners == [0, 2, 6, 8]  # clamp(start - 2, 0, 8): interior patches have a margin of 2 each side


def test_neighborhood_indices_square_divisible():
    idx = neighborhood_indices((8, 8), (4, 4))
    assert idx.patch == (2, 2) and idx.window == (4, 4) and idx.patches == 16
    assert idx.corners[:4] == [(0, 0), (0, 1), (0, 3), (0, 4)]
    assert idx.kv.shape == (16, 16)
    # patch (1, 1) covers rows/cols 2..3; its window is rows/cols 1..4
    assert idx.query[5].tolist() == [2 * 8 + 2, 2 * 8 + 3, 3 * 8 + 2, 3 * 8 + 3]
    assert idx.kv[5].tolist() == [r * 8 + c for r in range(1, 5) for c in range(1, 5)]


def test_neighborhood_indices_non_square_not_divisible_by_the_patch():
    idx = neighborhood_indices((7, 11), (4, 6))
    assert idx.patch == (2, 3)
    assert idx.patches == 4 * 4  # ceil(7/2) x ceil(11/3)
    # the last row of patches holds only row 6; the last column only column 9..10
    last = idx.query[-1].view(2, 3)
    assert last.tolist() == [[6 * 11 + 9, 6 * 11 + 10, -1], [-1, -1, -1]]
    assert idx.corners[-1] == (3, 5)  # slid inward: rows 3..6, cols 5..10
    assert idx.kv.shape == (16, 24)


def test_neighborhood_indices_axis_shorter_than_the_window_is_one_patch():
    idx = neighborhood_indices((3, 20), (4, 8))
    assert idx.patch == (3, 4) and idx.window == (3, 8)
    assert all(r == 0 for r, _ in idx.corners)


def _check_layout(grid, window, offset):
    idx = neighborhood_indices(grid, window, offset)
    H, W = grid
    flat = idx.query.flatten()
    real = flat[flat >= 0]
    assert sorted(real.tolist()) == list(range(H * W))  # every query token in exactly one patch
    assert torch.equal(flat[idx.inverse], torch.arange(H * W))
    wh, ww = idx.window
    assert (wh, ww) == (min(window[0], H), min(window[1], W))
    for n in range(idx.patches):
        r0, c0 = idx.corners[n]
        assert 0 <= r0 <= H - wh and 0 <= c0 <= W - ww  # the window stays inside the canvas
        kv = idx.kv[n]
        assert kv.tolist() == [r * W + c for r in range(r0, r0 + wh) for c in range(c0, c0 + ww)]
        q = idx.query[n][idx.query[n] >= 0]
        assert set(q.tolist()) <= set(kv.tolist())  # the query patch lies inside its window


@pytest.mark.parametrize("seed", range(6))
def test_neighborhood_indices_invariants_on_random_layouts(seed):
    rng = random.Random(seed)
    for _ in range(10):
        window = (rng.randint(1, 9), rng.randint(1, 9))
        grid = (rng.randint(1, 30), rng.randint(1, 30))
        off = [rng.randint(0, max(1, w // 2)) if g >= w else 0 for g, w in zip(grid, window)]
        _check_layout(grid, window, tuple(off))


def test_query_shift_pads_the_grid_and_keeps_every_token_once():
    idx = neighborhood_indices((8, 12), (4, 6), (1, 2))
    assert idx.patches == 5 * 5  # ceil((8+2)/2) x ceil((12+3)/3)
    assert idx.query[0].tolist()[:3] == [-1, -1, -1]  # the first row of the first patch is padding
    with pytest.raises(InvalidArgumentError, match="query shift"):
        neighborhood_indices((8, 12), (4, 6), (3, 0))


@pytest.mark.parametrize("grid,window", [((8, 12), (4, 6)), ((16, 16), (8, 8)), ((7, 11), (4, 6))])
def test_query_shift_always_pads_a_whole_patch_like_the_official_jitter(grid, window):
    """The official query_random_jitter pads the query grid by a whole patch whatever the drawn
    offset: H/p + 1 patch rows also for an offset of 0 (the last row all padding) or of p (the
    first); without a shift the grid is tiled from 0 with ceil(H/p) rows."""
    (H, W), (ph, pw) = grid, (window[0] // 2, window[1] // 2)
    plain = neighborhood_indices(grid, window)
    assert plain.patches == -(-H // ph) * -(-W // pw)
    rows, cols = -(-(H + ph) // ph), -(-(W + pw) // pw)
    for off in [(0, 0), (0, pw), (ph, 0), (ph, pw), (1, 1)]:
        idx = neighborhood_indices(grid, window, off)
        assert idx.patches == rows * cols, off
        _check_layout(grid, window, off)
        empty = (idx.query.view(rows, cols, -1) < 0).all(-1)
        if off[0] == 0 and H % ph == 0:
            assert empty[-1].all()  # the padded last row
        if off[0] == ph:
            assert empty[0].all()  # the padded first row
    assert axis_plan(16, 8, 0) == (4, [0, 4, 8, 12, 16], [0, 2, 6, 8, 8])  # the extra row reuses the border window
    assert axis_plan(16, 8, 4) == (4, [-4, 0, 4, 8, 12], [0, 0, 2, 6, 8])
    assert axis_plan(16, 8) == (4, [0, 4, 8, 12], [0, 2, 6, 8])


def _official_jitter_attention(q, k, v, text, grid, window, offset):
    """The official FLUX query jitter, written out from its description (spec §2.2): zero-pad the
    query grid to (H + p) x (W + p) with the real queries at the offset, tile it with p-sized
    patches, give patch (a, b) the window at clamp(a·p - o - h/4, 0, H - h) (likewise for columns),
    prepend the text to queries and keys, crop the image output, average the text over all patches."""
    B, Hh, L, d = q.shape
    (H, W), (h, w) = grid, window
    ph, pw = h // 2, w // 2
    oh, ow = offset
    tq, tk, tv = text
    qg = torch.zeros(B, Hh, H + ph, W + pw, d)
    qg[:, :, oh : oh + H, ow : ow + W] = q.view(B, Hh, H, W, d)
    kg, vg = k.view(B, Hh, H, W, d), v.view(B, Hh, H, W, d)
    out = torch.zeros_like(qg)
    texts = []
    for a in range((H + ph) // ph):
        for b in range((W + pw) // pw):
            r = min(max(a * ph - oh - h // 4, 0), H - h)
            c = min(max(b * pw - ow - w // 4, 0), W - w)
            qp = qg[:, :, a * ph : (a + 1) * ph, b * pw : (b + 1) * pw].reshape(B, Hh, -1, d)
            kp = kg[:, :, r : r + h, c : c + w].reshape(B, Hh, -1, d)
            vp = vg[:, :, r : r + h, c : c + w].reshape(B, Hh, -1, d)
            o = F.scaled_dot_product_attention(torch.cat([tq, qp], 2), torch.cat([tk, kp], 2), torch.cat([tv, vp], 2))
            lt = tq.shape[2]
            texts.append(o[:, :, :lt])
            out[:, :, a * ph : (a + 1) * ph, b * pw : (b + 1) * pw] = o[:, :, lt:].view(B, Hh, ph, pw, d)
    return out[:, :, oh : oh + H, ow : ow + W].reshape(B, Hh, L, d), torch.stack(texts).mean(0)


@pytest.mark.parametrize("offset", [(0, 0), (0, 3), (4, 0), (4, 3), (2, 1)])
def test_query_shift_equals_the_official_padded_layout_for_image_and_text(offset):
    """Image and text outputs both equal the official padded layout, including offsets of 0 (where
    the text mean counts the all-padding patches) and of a whole patch."""
    g = torch.Generator().manual_seed(3)
    grid, window = (16, 12), (8, 6)
    q, k, v = (torch.randn(2, 2, 16 * 12, 4, generator=g) for _ in range(3))
    text = tuple(torch.randn(2, 2, 3, 4, generator=g) for _ in range(3))
    ref_img, ref_txt = _official_jitter_attention(q, k, v, text, grid, window, offset)
    img, txt = npa_attention(q, k, v, neighborhood_indices(grid, window, offset), text=text)
    assert torch.allclose(img, ref_img, atol=1e-6)
    assert torch.allclose(txt, ref_txt, atol=1e-6)
    # the minimal tiling (dropping the all-padding patches) gives the same image but another text mean
    if offset[0] == 0 or offset[1] == 0:
        H, W = grid
        rows, cols = axis_plan(H, 8, offset[0]), axis_plan(W, 6, offset[1])
        keep = [(i * len(cols[1]) + j) for i, r in enumerate(rows[1]) if r < H for j, c in enumerate(cols[1]) if c < W]
        idx = neighborhood_indices(grid, window, offset)
        minimal = idx._replace(query=idx.query[keep], kv=idx.kv[keep], corners=[idx.corners[i] for i in keep])
        flat = minimal.query.flatten()
        slots = (flat >= 0).nonzero().flatten()
        inverse = torch.empty(H * W, dtype=torch.long)
        inverse[flat[slots]] = slots
        img2, txt2 = npa_attention(q, k, v, minimal._replace(inverse=inverse), text=text)
        assert torch.allclose(img2, ref_img, atol=1e-6)
        assert (txt2 - ref_txt).abs().max() > 1e-4


def test_the_npa_docstring_states_the_official_shift_layout():
    import anysize.patches.npa as npa

    doc = " ".join(npa.__doc__.split())
    assert "padded by one whole patch on each axis" in doc and "(H/p + 1) x (W/p + 1)" in doc
    assert "whatever the offsets, 0 included" in doc
    H, p = 64, 32
    assert axis_plan(H, 2 * p, 0)[1] == [0, 32, 64] and len(axis_plan(H, 2 * p, 0)[1]) == H // p + 1


# ------------------------------------------------------------------------------ attention core


def test_a_window_covering_the_canvas_equals_full_attention_exactly():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6 * 10, 8, generator=g) for _ in range(3))
    out, _ = npa_attention(q, k, v, neighborhood_indices((6, 10), (7, 11)))
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))


def test_partitioned_queries_with_whole_canvas_windows_equal_full_attention_with_text():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 8 * 8, 4, generator=g) for _ in range(3))
    tq, tk, tv = (torch.randn(2, 2, 3, 4, generator=g) for _ in range(3))
    idx = neighborhood_indices((8, 8), (8, 8))  # 4 patches, every window the whole canvas
    assert idx.patches == 4
    out, text = npa_attention(q, k, v, idx, text=(tq, tk, tv))
    ref = F.scaled_dot_product_attention(torch.cat([tq, q], 2), torch.cat([tk, k], 2), torch.cat([tv, v], 2))
    assert torch.allclose(out, ref[:, :, 3:], atol=1e-6)
    assert torch.allclose(text, ref[:, :, :3], atol=1e-6)


@pytest.mark.parametrize("offset,chunk", [(None, None), ((0, 0), None), ((1, 2), None), ((2, 1), 3), ((2, 2), 4)])
def test_npa_attention_equals_a_loop_over_neighbourhoods(offset, chunk):
    g = torch.Generator().manual_seed(2)
    H, W = 7, 10
    q, k, v = (torch.randn(1, 2, H * W, 4, generator=g) for _ in range(3))
    tq, tk, tv = (torch.randn(1, 2, 2, 4, generator=g) for _ in range(3))
    idx = neighborhood_indices((H, W), (4, 4), offset)
    out, text = npa_attention(q, k, v, idx, text=(tq, tk, tv), chunk=chunk)
    ref, texts = torch.zeros_like(q), []
    for n in range(idx.patches):  # one plain attention per patch, on explicit token lists
        r0, c0 = idx.corners[n]
        keys = [r * W + c for r in range(r0, r0 + 4) for c in range(c0, c0 + 4)]
        qs = [t for t in idx.query[n].tolist() if t >= 0]
        o = F.scaled_dot_product_attention(torch.cat([tq, q[:, :, qs]], 2), torch.cat([tk, k[:, :, keys]], 2),
                                           torch.cat([tv, v[:, :, keys]], 2))
        ref[:, :, qs] = o[:, :, 2:]
        texts.append(o[:, :, :2])
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(text, torch.stack(texts).mean(0), atol=1e-6)


# ------------------------------------------------------------------------------ processors vs stock


def _stock_on_window(attn, proc, fn):
    """Run ``fn`` with ``attn``'s stock processor ``proc`` (whatever NPA installed is put back)."""
    current = attn.processor
    attn.set_processor(proc)
    try:
        return fn()
    finally:
        attn.set_processor(current)


def test_unet_processor_equals_stock_attention_on_each_neighbourhood(tiny):
    pipe = tiny("sdxl")
    attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    stock = attn.processor
    H, W = 10, 14  # a layer map at 2x-ish the native 8x8 of this block (native latent 16, factor 2)
    x = torch.randn(2, H * W, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
    with NPAPatch(adapt(pipe)) as patch:
        patch.latent_hw = (2 * H, 2 * W)
        ours = attn(x)
    idx = neighborhood_indices((H, W), (8, 8))
    ref = torch.zeros_like(ours)
    for n in range(idx.patches):
        keys = idx.kv[n]
        out = _stock_on_window(attn, stock, lambda: attn(x[:, keys]))
        pos = {t: i for i, t in enumerate(keys.tolist())}
        qs = [t for t in idx.query[n].tolist() if t >= 0]
        ref[:, qs] = out[:, [pos[t] for t in qs]]
    assert torch.allclose(ours, ref, atol=1e-5)


def test_sd3_processor_equals_stock_joint_attention_on_each_neighbourhood(tiny):
    pipe = tiny("sd3")
    attn = pipe.transformer.transformer_blocks[0].attn
    stock = attn.processor
    H, W = 9, 12  # native 16 latent px = 8 tokens per side
    dim = attn.to_q.in_features
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(1, H * W, dim, generator=g), torch.randn(1, 5, dim, generator=g)
    with NPAPatch(adapt(pipe)) as patch:
        patch.token_grid = (H, W)
        ours, ours_c = attn(x, encoder_hidden_states=c)
    idx = neighborhood_indices((H, W), (8, 8))
    ref, texts = torch.zeros_like(ours), []
    for n in range(idx.patches):
        keys = idx.kv[n]
        out, out_c = _stock_on_window(attn, stock, lambda: attn(x[:, keys], encoder_hidden_states=c))
        pos = {t: i for i, t in enumerate(keys.tolist())}
        qs = [t for t in idx.query[n].tolist() if t >= 0]
        ref[:, qs] = out[:, [pos[t] for t in qs]]
        texts.append(out_c)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(ours_c, torch.stack(texts).mean(0), atol=1e-5)  # to_add_out is affine


@pytest.mark.parametrize("block", ["double", "single"])
def test_flux_processor_equals_stock_attention_with_window_rope(tiny, block):
    """The stock FLUX processor on [text; window] with text ids at the window's corner and image ids
    at their canvas positions gives, at the patch's queries, what NPA gives."""
    pipe = tiny("flux")
    net = pipe.transformer
    attn = (net.transformer_blocks[0] if block == "double" else net.single_transformer_blocks[0]).attn
    stock = attn.processor
    H, W, lt = 10, 12, 3  # native 16 latent px = 8 tokens per side
    dim = attn.to_q.in_features
    g = torch.Generator().manual_seed(2)
    x, c = torch.randn(1, H * W, dim, generator=g), torch.randn(1, lt, dim, generator=g)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(H).float(), torch.arange(W).float(),
                                         indexing="ij"), -1).reshape(-1, 3)
    txt_ids = torch.zeros(lt, 3)

    def call(img, ids_txt, ids_img):
        rope = net.pos_embed(torch.cat([ids_txt, ids_img]))
        if block == "double":
            return attn(img, encoder_hidden_states=c, image_rotary_emb=rope)
        out = attn(torch.cat([c, img], 1), image_rotary_emb=rope)
        return out[:, lt:], out[:, :lt]

    with NPAPatch(adapt(pipe), window=16) as patch:  # the tiny FLUX pipeline says 1024 px native
        patch.token_grid, patch.text_len = (H, W), lt
        ours, ours_c = call(x, txt_ids, img_ids)
    idx = neighborhood_indices((H, W), (8, 8))
    ref, texts = torch.zeros_like(ours), []
    for n in range(idx.patches):
        keys = idx.kv[n]
        corner = torch.tensor([[0.0, *idx.corners[n]]]).expand(lt, 3)
        out, out_c = _stock_on_window(attn, stock, lambda: call(x[:, keys], corner, img_ids[keys]))
        pos = {t: i for i, t in enumerate(keys.tolist())}
        qs = [t for t in idx.query[n].tolist() if t >= 0]
        ref[:, qs] = out[:, [pos[t] for t in qs]]
        texts.append(out_c)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(ours_c, torch.stack(texts).mean(0), atol=1e-5)
    assert patch.log == [((H, W), (8, 8), idx.patches)]


# ------------------------------------------------------------------------------ the patch on pipelines


def stock(pipe, size=256, steps=2, seed=0):
    kw = {} if type(pipe).__name__.startswith("Flux") else {"guidance_scale": 5.0}
    return pipe("a red square", height=size, width=size, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed), output_type="latent", **kw).images


def fingerprint(net):
    return ({k: id(v) for k, v in net.attn_processors.items()},
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()),
            "_anysize_patch" in net.__dict__)


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_changes_large_canvases_only_and_leaving_restores_bit_identical_outputs(tiny, family):
    pipe = tiny(family)
    if family == "flux":
        pipe.default_sample_size = 16  # the tiny FLUX is "native" at 128 px like the others
    net = pipe.transformer if family in ("sd3", "flux") else pipe.unet
    state = fingerprint(net)
    before, native = stock(pipe), stock(pipe, size=128)
    try:
        with anysize.patch(pipe, "npa") as p:
            inside, inside_native = stock(pipe), stock(pipe, size=128)
            assert fingerprint(net) != state
    finally:
        if family == "flux":
            del pipe.default_sample_size
    assert fingerprint(net) == state
    assert torch.equal(stock(pipe), before)
    assert torch.equal(inside_native, native)  # at the native size the patch changes nothing
    assert (inside - before).abs().max() > 1e-3
    assert p.log and all(n > 1 for _, _, n in p.log)


def test_patch_on_an_adapter_and_apply_at_native_is_full_attention_up_to_rounding(tiny):
    for family in ["sd1", "sd3", "flux"]:
        adapter = adapt(tiny(family), native_size=16)

        def run():
            return anysize.generate(adapter, "a cat", height=128, width=128, steps=2, seed=0,
                                    output_type="latent", progress=False).latents
        plain = run()
        with anysize.patch(adapter, "npa", apply_at_native=True) as p:
            split = run()
        assert p.log and all(n == 4 for _, _, n in p.log)  # really partitioned, into 4 patches
        assert torch.allclose(split, plain, atol=1e-4), family


@pytest.mark.parametrize("family", ["flux", "sdxl"])  # the official code shifts FLUX only
def test_query_shift_is_seeded_per_image(tiny, family):
    adapter = adapt(tiny(family), native_size=16)

    def run(seed, prompts=("a cat",)):
        with anysize.patch(adapter, "npa", shift=True, seed=seed):
            return anysize.generate(adapter, list(prompts), height=256, width=256, steps=2, seed=0,
                                    output_type="latent", progress=False).latents
    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    plain = anysize.generate(adapter, "a cat", height=256, width=256, steps=2, seed=0, output_type="latent",
                             progress=False).latents
    assert not torch.allclose(a, plain)


def test_patch_restores_after_an_exception_and_refuses_nesting(tiny):
    pipe = tiny("sd1")
    state = fingerprint(pipe.unet)
    with pytest.raises(RuntimeError, match="boom"):
        with anysize.patch(pipe, "npa"):
            raise RuntimeError("boom")
    assert fingerprint(pipe.unet) == state
    with anysize.patch(pipe, "npa"):
        with pytest.raises(InvalidArgumentError, match="already patched"):
            with anysize.patch(pipe, "hidiffusion"):
                pass
    assert fingerprint(pipe.unet) == state


@pytest.mark.parametrize("options,match", [
    ({"window": 0}, "window"), ({"window": "8"}, "window"), ({"shift": 1}, "shift"),
    ({"chunk": 0}, "chunk"), ({"apply_at_native": "yes"}, "apply_at_native"), ({"bogus": 1}, "no option bogus"),
    ({"seed": "x"}, "seed"), ({"seed": -1}, r"seed must be an integer in \[0, 9223372036854775807\]"),
    ({"seed": [1, 2**63]}, "seed must be an integer in"),
])
def test_bad_patch_options_are_refused(tiny, options, match):
    with pytest.raises(InvalidArgumentError, match=match):
        anysize.patch(tiny("sd1"), "npa", **options)
    if "seed" in options:  # the same check in hidiffusion's patch
        with pytest.raises(InvalidArgumentError, match=match):
            anysize.patch(tiny("sd1"), "hidiffusion", **options)


def test_patch_refuses_non_pipelines():
    with pytest.raises(InvalidArgumentError, match="pipeline or an anysize model adapter"):
        anysize.patch(object(), "npa")



def test_sd3_extended_table_contains_the_stored_one_and_centred_crops_are_unchanged(tiny):
    from anysize.patches.npa import extended_sincos_table

    pe = tiny("sd3").transformer.pos_embed
    m = pe.pos_embed_max_size
    table = extended_sincos_table(pe, m + 5)  # grows by 3 on each side: 54
    assert table.shape == (1, 54 * 54, pe.pos_embed.shape[-1])
    inner = table.reshape(54, 54, -1)[3 : 3 + m, 3 : 3 + m].reshape(1, m * m, -1)
    assert torch.allclose(inner, pe.pos_embed, atol=1e-5)
    assert extended_sincos_table(pe, m).shape == pe.pos_embed.shape


def test_stock_sd3_pipeline_beyond_its_table_runs_inside_the_patch_only(tiny):
    pipe = tiny("sd3")
    pe = pipe.transformer.pos_embed
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        stock(pipe, size=1024, steps=1)  # 64 patches > the 48 of the table
    with anysize.patch(pipe, "npa") as p:
        out = stock(pipe, size=1024, steps=1)
    assert out.shape[-2:] == (128, 128) and torch.isfinite(out).all()
    assert pe.pos_embed_max_size == 48 and pe.pos_embed.shape[1] == 48 * 48
    assert p.log


def test_npa_composes_with_tiled_methods_whose_tiles_exceed_the_native_size(tiny):
    """Reusable inside other methods: fstd with 2x-native tiles gets NPA inside each tile."""
    adapter = adapt(tiny("sd1"), native_size=16)

    def run():
        return anysize.generate(adapter, "a cat", height=256, width=384, steps=2, seed=0, method="fstd",
                                method_options={"tile": 32}, output_type="latent", progress=False).latents
    plain = run()
    with anysize.patch(adapter, "npa") as p:
        inside = run()
    assert p.log and {grid for grid, _, _ in p.log} >= {(32, 32)}  # a 32-latent tile's top-level map
    assert not torch.allclose(plain, inside)
    assert torch.equal(run(), plain)
