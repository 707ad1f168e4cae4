"""ProPainter's token layers: soft split/composition and the mask-guided sparse window transformer.

Tokens are overlapping 7x7 patches (stride 3, padding 3) of the 1/4-resolution feature map, so a 60x108 map (a
240x432 frame) gives a 20x36 token grid per frame. Token tensors are (B,T,h,w,C) with C = 512.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SoftComposition", "SoftSplit", "SparseTransformer", "token_grid_size"]

PATCH = {"kernel_size": (7, 7), "stride": (3, 3), "padding": (3, 3)}


def token_grid_size(feature_size: tuple[int, int]) -> tuple[int, int]:
    """Token grid (h, w) of a feature map of ``feature_size`` under the 7/3/3 soft split."""
    (kh, kw), (sh, sw), (ph, pw) = PATCH["kernel_size"], PATCH["stride"], PATCH["padding"]
    return (feature_size[0] + 2 * ph - kh) // sh + 1, (feature_size[1] + 2 * pw - kw) // sw + 1


class SoftSplit(nn.Module):
    """Unfold overlapping 7x7 patches and embed each (C*49 -> hidden)."""

    def __init__(self, channels: int = 128, hidden: int = 512):
        super().__init__()
        self.embedding = nn.Linear(channels * 49, hidden)

    def forward(self, features: Tensor, batch_size: int) -> Tensor:
        """(B*T,C,H,W) -> (B,T,h,w,hidden)."""
        h, w = token_grid_size(features.shape[-2:])
        patches = F.unfold(features, **PATCH).transpose(1, 2)
        return self.embedding(patches).view(batch_size, -1, h, w, self.embedding.out_features)


class SoftComposition(nn.Module):
    """Project tokens back to 7x7 patches, fold them (overlaps summed) and apply a 3x3 conv."""

    def __init__(self, channels: int = 128, hidden: int = 512):
        super().__init__()
        self.embedding = nn.Linear(hidden, channels * 49)
        self.bias_conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, tokens: Tensor, feature_size: tuple[int, int]) -> Tensor:
        """(B,T,h,w,hidden) -> (B*T,C,H,W) with (H, W) = ``feature_size``."""
        patches = self.embedding(tokens.flatten(2, 3).flatten(0, 1)).transpose(1, 2)
        return self.bias_conv(F.fold(patches, output_size=feature_size, **PATCH))


class FusionFeedForward(nn.Module):
    """FFN whose hidden units are 40 channels x 49 patch taps: folded to the feature map (overlaps averaged) and
    re-split between the two linear layers, so neighbouring tokens exchange information."""

    def __init__(self, dim: int = 512, hidden_dim: int = 1960):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(dim, hidden_dim))
        self.fc2 = nn.Sequential(nn.GELU(), nn.Linear(hidden_dim, dim))

    def forward(self, x: Tensor, feature_size: tuple[int, int]) -> Tensor:
        """(B,T,h,w,C) -> (B,T,h,w,C)."""
        shape = x.shape
        hidden = self.fc1(x).flatten(2, 3).flatten(0, 1).transpose(1, 2)  # (B*T, 1960, h*w)
        overlap = F.fold(torch.ones_like(hidden[:1, :49]), output_size=feature_size, **PATCH)
        folded = F.fold(hidden, output_size=feature_size, **PATCH) / overlap
        hidden = F.unfold(folded, **PATCH).transpose(1, 2)
        return self.fc2(hidden).view(shape)


def _rolled_key_selection(window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """Indices, into the 4 diagonally rolled windows concatenated, of the tokens lying outside the window itself."""
    rows = torch.arange(window[0]).view(-1, 1)
    cols = torch.arange(window[1]).view(1, -1)
    outside = []
    for sy, sx in ((-shift[0], -shift[1]), (-shift[0], shift[1]), (shift[0], -shift[1]), (shift[0], shift[1])):
        # torch.roll by (sy, sx) puts the token from (r - sy, c - sx) at window position (r, c).
        src_r, src_c = rows - sy, cols - sx
        inside = (src_r >= 0) & (src_r < window[0]) & (src_c >= 0) & (src_c < window[1])
        outside.append(~inside)
    return torch.stack(outside).flatten().nonzero().view(-1)


class SparseWindowAttention(nn.Module):
    """Window attention guided by the hole mask.

    The (zero-padded) token grid is cut into ``window`` windows. A window counts as masked if any local frame has a
    hole token in it. Masked windows: the queries of all T frames attend jointly to keys from the frames in
    ``key_frames``, each frame contributing the window's own tokens, the neighbouring tokens reached by four
    diagonal rolls of half a window, and ``pool`` x ``pool`` average-pooled global tokens. Unmasked windows: plain
    per-frame attention inside the window.
    """

    def __init__(self, dim: int = 512, num_heads: int = 4, window: tuple[int, int] = (5, 9), pool: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.pool_layer = nn.Conv2d(dim, dim, pool, stride=pool, groups=dim)
        self.roll_shift = tuple((size + 1) // 2 for size in window)
        self.register_buffer("valid_ind_rolled", _rolled_key_selection(window, self.roll_shift))

    def _windows(self, x: Tensor) -> Tensor:
        """(B,T,H,W,C), H and W multiples of the window -> (B, windows, heads, T, window tokens, C/heads)."""
        b, t, h, w, c = x.shape
        wh, ww = self.window
        x = x.view(b, t, h // wh, wh, w // ww, ww, self.num_heads, c // self.num_heads)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, self.num_heads, t, wh * ww, c // self.num_heads)

    def _merge_windows(self, windows: Tensor, height: int, width: int) -> Tensor:
        b, _, heads, t, _, ch = windows.shape
        wh, ww = self.window
        x = windows.view(b, height // wh, width // ww, heads, t, wh, ww, ch)
        return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, t, height, width, heads * ch)

    def forward(self, x: Tensor, token_holes: Tensor, key_frames: Tensor) -> Tensor:
        """Attend.

        Args:
            x: (B,T,h,w,C) normalised tokens.
            token_holes: (B,T_local,h,w,1), > 0 where a local frame's token covers a hole.
            key_frames: (K,) indices of the frames providing keys in masked windows.

        Returns:
            (B,T,h,w,C).
        """
        b, t, h, w, c = x.shape
        wh, ww = self.window
        pad_h, pad_w = -h % wh, -w % ww
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        token_holes = F.pad(token_holes, (0, 0, 0, pad_w, 0, pad_h))
        height, width = h + pad_h, w + pad_w

        query, key, value = self.query(x), self.key(x), self.value(x)
        win_query, win_key, win_value = self._windows(query), self._windows(key), self._windows(value)
        shifts = [(-self.roll_shift[0], -self.roll_shift[1]), (-self.roll_shift[0], self.roll_shift[1]),
                  (self.roll_shift[0], -self.roll_shift[1]), (self.roll_shift[0], self.roll_shift[1])]
        rolled_key = torch.cat([self._windows(key.roll(s, dims=(2, 3))) for s in shifts], dim=4)
        rolled_value = torch.cat([self._windows(value.roll(s, dims=(2, 3))) for s in shifts], dim=4)
        pooled = self.pool_layer(x.flatten(0, 1).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # (B*T,P,C)
        pooled_key, pooled_value = (
            proj(pooled).view(b, 1, t, -1, self.num_heads, c // self.num_heads).permute(0, 1, 4, 2, 3, 5)
            for proj in (self.key, self.value)
        )
        num_windows = win_query.shape[1]
        sparse_key = torch.cat([win_key, rolled_key[:, :, :, :, self.valid_ind_rolled],
                                pooled_key.expand(-1, num_windows, -1, -1, -1, -1)], dim=4)
        sparse_value = torch.cat([win_value, rolled_value[:, :, :, :, self.valid_ind_rolled],
                                  pooled_value.expand(-1, num_windows, -1, -1, -1, -1)], dim=4)

        hole_windows = F.max_pool2d(token_holes.flatten(0, 1).squeeze(-1).unsqueeze(1), self.window)
        masked = hole_windows.view(b, -1, num_windows).sum(1) > 0  # (B, windows)

        out = torch.empty_like(win_query)
        # Unmasked windows: each frame attends within its own window (T is a batch dimension here).
        out[:] = F.scaled_dot_product_attention(win_query, win_key, win_value)
        for i in range(b):
            idx = masked[i].nonzero().view(-1)
            if idx.numel() == 0:
                continue
            q = win_query[i, idx].flatten(2, 3)  # (m, heads, T*tokens, ch)
            k = sparse_key[i, idx][:, :, key_frames].flatten(2, 3)
            v = sparse_value[i, idx][:, :, key_frames].flatten(2, 3)
            out[i, idx] = F.scaled_dot_product_attention(q, k, v).view_as(win_query[i, idx])
        out = self._merge_windows(out, height, width)[:, :, :h, :w]
        return self.proj(out)


class SparseTransformerLayer(nn.Module):
    """Pre-norm block: sparse window attention, then the fusion FFN; both residual."""

    def __init__(self, dim: int = 512, num_heads: int = 4, window: tuple[int, int] = (5, 9), pool: int = 4):
        super().__init__()
        self.attention = SparseWindowAttention(dim, num_heads, window, pool)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FusionFeedForward(dim)

    def forward(self, x: Tensor, feature_size: tuple[int, int], token_holes: Tensor, key_frames: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), token_holes, key_frames)
        return x + self.mlp(self.norm2(x), feature_size)


class SparseTransformer(nn.Module):
    """``depth`` sparse layers; layer i takes masked-window keys from every ``t_dilation``-th frame starting at
    frame ``i % t_dilation`` (temporal sparsity)."""

    def __init__(self, depth: int = 8, dim: int = 512, num_heads: int = 4, window: tuple[int, int] = (5, 9),
                 pool: int = 4):
        super().__init__()
        self.transformer = nn.ModuleList(SparseTransformerLayer(dim, num_heads, window, pool) for _ in range(depth))

    def forward(self, tokens: Tensor, feature_size: tuple[int, int], token_holes: Tensor,
                t_dilation: int = 2) -> Tensor:
        """tokens (B,T,h,w,C), token_holes (B,T_local,h,w,1) -> (B,T,h,w,C)."""
        if len(self.transformer) % t_dilation:
            raise ValueError(f"t_dilation={t_dilation} must divide the depth {len(self.transformer)}")
        t = tokens.shape[1]
        for i, layer in enumerate(self.transformer):
            key_frames = torch.arange(i % t_dilation, t, t_dilation, device=tokens.device)
            tokens = layer(tokens, feature_size, token_holes, key_frames)
        return tokens
