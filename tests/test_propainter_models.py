"""ProPainter models: checkpoint compatibility against the upstream manifests, and behaviour of the building blocks
(image propagation, consistency check, deformable alignment, sparse attention) against hand-built references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import raft_large

from vipo.models.propainter import (
    BidirectionalRAFT,
    Discriminator,
    InpaintGenerator,
    RecurrentFlowCompleteNet,
    convert_raft_state_dict,
    flow_consistency,
    flow_warp,
    propagate_images,
    raft_state_dict_to_upstream,
)
from vipo.models.propainter.modules import ModulatedDeformAlign
from vipo.models.propainter.sparse_transformer import SparseWindowAttention

from manifests import load_manifest as _manifest


def _manifest_shapes(manifest: dict) -> dict[str, list[int]]:
    return {**manifest["params"], **manifest["buffers"], **manifest.get("state_dict_only", {})}


# ---------------------------------------------------------------- checkpoint compatibility


@pytest.mark.parametrize("model_cls, manifest_name", [
    (RecurrentFlowCompleteNet, "propainter_flowcomp.json"),
    (InpaintGenerator, "propainter_generator.json"),
    (Discriminator, "propainter_discriminator.json"),
])
def test_state_dict_matches_upstream_manifest(model_cls, manifest_name):
    manifest = _manifest(manifest_name)
    model = model_cls()
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert shapes == _manifest_shapes(manifest)
    assert len(shapes) == manifest["num_state_dict_entries"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    assert {n: list(p.shape) for n, p in model.named_parameters()} == manifest["params"]


def test_raft_converter_covers_every_key_and_shape():
    upstream = _manifest("propainter_raft.json")
    torchvision_manifest = _manifest("torchvision_raft_large.json")
    keymap = _manifest("propainter_raft_to_torchvision_keymap.json")
    upstream_shapes = _manifest_shapes(upstream)
    # The released file is saved from DataParallel: every key carries "module.".
    released = {f"module.{k}": torch.full(shape, float(i)) for i, (k, shape) in enumerate(upstream_shapes.items())}

    converted = convert_raft_state_dict(released)

    assert {k: list(v.shape) for k, v in converted.items()} == _manifest_shapes(torchvision_manifest)
    for upstream_key, tv_key in keymap["map"].items():
        assert torch.equal(converted[tv_key], released[f"module.{upstream_key}"]), upstream_key
    dropped = {k.removeprefix("module.") for k in released} - set(keymap["map"])
    assert dropped == set(keymap["dropped_alias_keys"])
    assert sum(converted[k].numel() for k in torchvision_manifest["params"]) == torchvision_manifest["num_params"]
    # The inverse writes the published layout, aliases included.
    assert set(raft_state_dict_to_upstream(converted)) == set(released)
    raft_large(weights=None).load_state_dict(converted, strict=True)


def test_raft_converter_names_a_foreign_key():
    with pytest.raises(KeyError, match="encoder.conv9.weight"):
        convert_raft_state_dict({"module.encoder.conv9.weight": torch.zeros(1)})


def test_raft_round_trip_through_published_names():
    torch.manual_seed(0)
    raft = raft_large(weights=None)
    restored = raft_large(weights=None)
    restored.load_state_dict(convert_raft_state_dict(raft_state_dict_to_upstream(raft.state_dict())), strict=True)
    for key, value in raft.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_bidirectional_raft_pairs_and_batching():
    torch.manual_seed(0)
    flow = BidirectionalRAFT(iterations=2)
    frames = torch.rand(1, 3, 3, 64, 64) * 2 - 1  # below torchvision's 128 px minimum: padded internally
    forward, backward = flow(frames, pairs_per_batch=4)
    assert forward.shape == backward.shape == (1, 2, 2, 64, 64)
    assert forward.dtype == torch.float32
    # Batching is only a memory knob, and the backward flow of pair t is the flow from frame t+1 to frame t.
    one_by_one = flow.pair_flows(frames[0, [2, 1]], frames[0, [1, 0]], pairs_per_batch=1)
    torch.testing.assert_close(one_by_one, backward[0].flip(0), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- warping, consistency check, image propagation


def _translated_video(num_frames: int, shift: tuple[int, int], size: tuple[int, int] = (24, 32)) -> torch.Tensor:
    """(1,T,3,H,W) frames whose content moves by ``shift`` = (dx, dy) pixels per frame, values in [-1,1]."""
    h, w = size
    margin = 4 * num_frames
    yy, xx = torch.meshgrid(torch.arange(h + 2 * margin), torch.arange(w + 2 * margin), indexing="ij")
    texture = torch.stack([torch.sin(xx * 0.9 + yy * 0.4), torch.cos(yy * 1.3 - xx * 0.2),
                           torch.sin(xx * yy * 0.05)])  # distinct values at every pixel
    top = [margin - t * shift[1] for t in range(num_frames)]
    left = [margin - t * shift[0] for t in range(num_frames)]
    frames = [texture[:, top[t]:top[t] + h, left[t]:left[t] + w] for t in range(num_frames)]
    return torch.stack(frames).unsqueeze(0)


def _constant_flows(num_frames: int, shift: tuple[int, int],
                    size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    # Frame t+1 at p + shift shows what frame t shows at p: forward flow = +shift, backward flow = -shift.
    forward = torch.tensor(shift, dtype=torch.float32).view(1, 1, 2, 1, 1).expand(1, num_frames - 1, 2, *size)
    return forward.clone(), -forward.clone()


def test_flow_warp_integer_shift_and_zero_outside():
    image = torch.arange(20.0).view(1, 1, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 0], flow[:, 1] = 1, 2  # sample one pixel right, two down
    warped = flow_warp(image, flow, mode="nearest")
    expected = torch.zeros(1, 1, 4, 5)
    expected[..., :2, :4] = image[..., 2:, 1:]
    assert torch.equal(warped, expected)
    assert torch.equal(flow_warp(image, flow, mode="bilinear"), expected)


def test_translation_fills_the_hole_exactly():
    shift, size = (2, 1), (24, 32)
    video = _translated_video(5, shift, size)
    forward, backward = _constant_flows(5, shift, size)
    holes = torch.zeros(1, 5, 1, *size)
    holes[:, 2, :, 8:16, 10:20] = 1  # frame 2 only: its neighbours saw the content
    frames, remaining = propagate_images(video * (1 - holes), forward, backward, holes)

    assert torch.equal(frames, video)  # hole content copied exactly, known pixels untouched
    assert remaining.sum() == 0


def test_moving_hole_over_moving_content_is_filled_from_other_frames():
    shift, size = (1, 0), (24, 32)
    video = _translated_video(6, shift, size)
    forward, backward = _constant_flows(6, shift, size)
    holes = torch.zeros(1, 6, 1, *size)
    for t in range(6):
        holes[:, t, :, 8:16, 4 + 3 * t:12 + 3 * t] = 1  # hole moves faster than the content
    frames, remaining = propagate_images(video * (1 - holes), forward, backward, holes)

    assert remaining.sum() == 0
    assert torch.equal(frames, video)


def test_static_hole_over_static_content_stays_a_hole():
    size = (16, 16)
    video = _translated_video(4, (0, 0), size)
    forward, backward = _constant_flows(4, (0, 0), size)
    holes = torch.zeros(1, 4, 1, *size)
    holes[..., 5:9, 5:9] = 1
    frames, remaining = propagate_images(video * (1 - holes), forward, backward, holes)

    assert torch.equal(remaining, holes)  # never seen in any frame: nothing to propagate
    assert torch.equal(frames, video * (1 - holes))


def _occluded_flows(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward flow +2 px in x everywhere; the backward flow disagrees inside a patch (an occluder there in frame
    t+1). Returns flow (1,2,H,W), flow_back (1,2,H,W) and the hand-computed validity (1,1,H,W)."""
    h, w = size
    flow = torch.zeros(1, 2, h, w)
    flow[:, 0] = 2
    flow_back = -flow.clone()
    flow_back[:, :, 4:10, 12:18] = torch.tensor([3.0, 0.0]).view(1, 2, 1, 1)
    valid = torch.ones(1, 1, h, w)
    valid[..., 4:10, 10:16] = 0  # pixels whose target p + (2, 0) lands in the patch
    valid[..., :, w - 2:] = 0  # target outside the frame: |f|^2 = 4 > 0.01 * 4 + 0.5
    return flow, flow_back, valid


def test_consistency_check_flags_a_synthetic_occlusion():
    flow, flow_back, expected = _occluded_flows((16, 24))
    assert torch.equal(flow_consistency(flow, flow_back), expected)
    # Small disagreements are tolerated: |f + b'|^2 = 0.25 < 0.01 * (4 + 2.25) + 0.5 (inside the frame).
    assert flow_consistency(flow, -flow * 0.75)[..., :-2].all()
    assert not flow_consistency(flow, -flow * 0.5)[..., :-2].any()  # 1 > 0.01 * (4 + 1) + 0.5


def test_propagation_does_not_fill_through_an_occlusion():
    size = (16, 24)
    video = _translated_video(2, (2, 0), size)
    flow, flow_back, valid = _occluded_flows(size)
    holes = torch.zeros(1, 2, 1, *size)
    holes[:, 0, :, 2:14, 6:18] = 1
    frames, remaining = propagate_images(video * (1 - holes), flow.unsqueeze(1), flow_back.unsqueeze(1), holes)

    assert torch.equal(remaining[:, 0], holes[:, 0] * (1 - valid))  # occluded part of the hole stays a hole
    filled = (holes[:, 0] * valid).bool().expand(1, 3, *size)
    assert torch.equal(frames[:, 0][filled], video[:, 0][filled])


# ---------------------------------------------------------------- learned blocks


def test_flow_guided_deform_align_starts_as_a_conv_on_the_flow_warped_input():
    torch.manual_seed(0)
    align = ModulatedDeformAlign(4, 6, condition_channels=5, max_residue=3.0, deform_groups=2)
    x = torch.randn(1, 4, 12, 14)
    flow = torch.zeros(1, 2, 12, 14)
    flow[:, 0], flow[:, 1] = 2, -1  # (dx, dy): asymmetric, so a swapped axis order would fail
    out = align(x, torch.randn(1, 5, 12, 14), flow)
    # Zero-initialised offset head: offsets = flow exactly, modulation = sigmoid(0) = 0.5.
    expected = 0.5 * F.conv2d(flow_warp(x, flow), align.weight, padding=1) + align.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out[..., 2:-2, 3:-3], expected[..., 2:-2, 3:-3], atol=1e-5, rtol=1e-5)


def test_flow_completion_keeps_known_flow_and_pairs_holes_by_direction():
    torch.manual_seed(0)
    model = RecurrentFlowCompleteNet().eval()
    forward, backward = torch.randn(1, 3, 2, 32, 48), torch.randn(1, 3, 2, 32, 48)
    holes = torch.zeros(1, 4, 1, 32, 48)
    holes[:, 3, :, 8:20, 10:30] = 1  # last frame only
    with torch.no_grad():
        done_forward, done_backward = model.complete_flows(forward, backward, holes)
        output = model(forward, holes[:, :-1], predict_edges=True)
    # Forward flow t -> t+1 is masked with frame t's hole: none here. Backward t+1 -> t uses frame t+1's.
    assert torch.equal(done_forward, forward)
    hole_last = holes[:, 3].bool().expand(1, 2, 32, 48)
    assert torch.equal(done_backward[:, 2][~hole_last], backward[:, 2][~hole_last])
    assert not torch.equal(done_backward[:, 2][hole_last], backward[:, 2][hole_last])
    assert torch.equal(done_backward[:, :2], backward[:, :2])
    assert output.edges.shape == (1, 3, 1, 32, 48) and 0 <= output.edges.min() and output.edges.max() <= 1


def test_rolled_key_selection_matches_hand_derived_indices():
    attention = SparseWindowAttention(dim=8, num_heads=2)
    # Each 5x9 rolled window keeps the tokens that came from outside the window: a roll by half a window (3, 5)
    # brings a 2x4 corner block of the window's own tokens back in. Flattened indices of those blocks:
    own = {0, 1, 2, 3, 9, 10, 11, 12}  # top-left roll: rows 0-1, cols 0-3
    own |= {45 + i for i in (5, 6, 7, 8, 14, 15, 16, 17)}  # top-right: rows 0-1, cols 5-8
    own |= {90 + i for i in (27, 28, 29, 30, 36, 37, 38, 39)}  # bottom-left: rows 3-4, cols 0-3
    own |= {135 + i for i in (32, 33, 34, 35, 41, 42, 43, 44)}  # bottom-right: rows 3-4, cols 5-8
    assert attention.valid_ind_rolled.tolist() == [i for i in range(180) if i not in own]


def _naive_sparse_attention(attn: SparseWindowAttention, x: torch.Tensor, token_holes: torch.Tensor,
                            key_frames: list[int]) -> torch.Tensor:
    """Token-by-token reference of the sparse window attention for batch size 1."""
    _, t, h, w, c = x.shape
    (wh, ww), heads = attn.window, attn.num_heads
    hp, wp = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
    xp = torch.zeros(t, hp, wp, c)
    xp[:, :h, :w] = x[0]
    holes = torch.zeros(token_holes.shape[1], hp, wp)
    holes[:, :h, :w] = token_holes[0, ..., 0]
    q, k, v = attn.query(xp), attn.key(xp), attn.value(xp)
    ph, pw = hp // 4, wp // 4  # 4x4 blocks, stride 4; a remainder is dropped
    pooled = xp[:, :4 * ph, :4 * pw].reshape(t, ph, 4, pw, 4, c).mean((2, 4)).reshape(t, -1, c)
    pooled_k, pooled_v = attn.key(pooled), attn.value(pooled)
    out = torch.zeros(t, hp, wp, c)
    sy, sx = attn.roll_shift
    for wy in range(hp // wh):
        for wx in range(wp // ww):
            own = [(wy * wh + r, wx * ww + cc) for r in range(wh) for cc in range(ww)]
            rolled = []
            for dy, dx in ((-sy, -sx), (-sy, sx), (sy, -sx), (sy, sx)):
                for r in range(wh):
                    for cc in range(ww):
                        if not (0 <= r - dy < wh and 0 <= cc - dx < ww):
                            rolled.append(((wy * wh + r - dy) % hp, (wx * ww + cc - dx) % wp))
            masked = holes[:, wy * wh:(wy + 1) * wh, wx * ww:(wx + 1) * ww].sum() > 0
            rows, cols = torch.tensor([p[0] for p in own]), torch.tensor([p[1] for p in own])
            for head in range(heads):
                sl = slice(head * c // heads, (head + 1) * c // heads)
                if masked:
                    keys = torch.cat([torch.cat([k[f, rows, cols, sl],
                                                 k[f, [p[0] for p in rolled], [p[1] for p in rolled], sl],
                                                 pooled_k[f, :, sl]]) for f in key_frames])
                    values = torch.cat([torch.cat([v[f, rows, cols, sl],
                                                   v[f, [p[0] for p in rolled], [p[1] for p in rolled], sl],
                                                   pooled_v[f, :, sl]]) for f in key_frames])
                    queries = q[:, rows, cols, sl].reshape(-1, c // heads)
                    weights = torch.softmax(queries @ keys.T / math.sqrt(c // heads), dim=-1)
                    out[:, rows, cols, sl] = (weights @ values).view(t, -1, c // heads)
                else:
                    for f in range(t):
                        queries, keys, values = q[f, rows, cols, sl], k[f, rows, cols, sl], v[f, rows, cols, sl]
                        weights = torch.softmax(queries @ keys.T / math.sqrt(c // heads), dim=-1)
                        out[f, rows, cols, sl] = weights @ values
    return attn.proj(out[:, :h, :w]).unsqueeze(0)


def test_sparse_window_attention_matches_token_by_token_reference():
    torch.manual_seed(0)
    attn = SparseWindowAttention(dim=16, num_heads=2)
    torch.nn.init.constant_(attn.pool_layer.weight, 1 / 16)
    torch.nn.init.zeros_(attn.pool_layer.bias)
    x = torch.randn(1, 3, 7, 12, 16)  # pads to 10x18: 2x2 windows
    token_holes = torch.zeros(1, 2, 7, 12, 1)  # two local frames
    token_holes[0, 1, 2, 10] = 1  # one hole token, in window (0, 1)
    key_frames = [0, 2]
    with torch.no_grad():
        out = attn(x, token_holes, torch.tensor(key_frames))
        expected = _naive_sparse_attention(attn, x, token_holes, key_frames)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_generator_decodes_local_frames_in_eval_and_all_frames_in_training():
    torch.manual_seed(0)
    generator = InpaintGenerator().eval()
    frames = torch.rand(1, 4, 3, 64, 64) * 2 - 1  # 3 local + 1 reference
    flows = torch.randn(1, 2, 2, 64, 64)
    holes = torch.zeros(1, 4, 1, 64, 64)
    holes[..., 16:40, 20:44] = 1
    with torch.no_grad():
        local = generator(frames, flows, -flows, holes, holes, num_local_frames=3)
        generator.train()
        every = generator(frames, flows, -flows, holes, holes, num_local_frames=3)
    assert local.shape == (1, 3, 3, 64, 64) and every.shape == (1, 4, 3, 64, 64)
    assert local.abs().max() <= 1 and torch.isfinite(every).all()


def test_discriminator_scores_a_4x7_patch_grid_per_frame():
    torch.manual_seed(0)
    with torch.no_grad():
        scores = Discriminator()(torch.rand(1, 2, 3, 240, 432) * 2 - 1)
    assert scores.shape == (1, 2, 128, 4, 7)


@pytest.mark.parametrize("model_cls", [RecurrentFlowCompleteNet, Discriminator])
def test_save_pretrained_round_trip(model_cls, tmp_path):
    torch.manual_seed(0)
    model = model_cls()
    model.save_pretrained(tmp_path)
    restored = model_cls.from_pretrained(tmp_path).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(restored[key], value), key  # spectral-norm u/v buffers included
