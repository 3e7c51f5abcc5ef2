"""The Mamba block (Gu and Dao, 2023), equivalent to ``mamba_ssm.modules.mamba_simple.Mamba``.

Same parameters, initialisation and state dict (keys ``in_proj.weight``, ``conv1d.weight``,
``conv1d.bias``, ``x_proj.weight``, ``dt_proj.weight``, ``dt_proj.bias``, ``A_log``, ``D``,
``out_proj.weight``, same shapes), so checkpoints move between the two. The selective scan runs
on the backend chosen by :mod:`mambava.models.ssm` (mamba-ssm's CUDA kernel on a GPU, the numba
kernel on a CPU).

Two ways to run it, with the same result:

- ``forward(x)``: the whole sequence (batch, length, d_model) in parallel, linear in length;
- ``step(x_t, state)``: one frame at a time, carrying ``(conv_state, ssm_state)``; for streaming.
  ``forward(x, return_state=True)`` hands over the state after a prefix.

Inference over a long sequence (no autograd, more than ``chunk_frames`` frames, any backend but
mamba-ssm's, whose scan takes no initial state) runs ``forward`` in pieces of ``chunk_frames``
frames carrying that state: the same computation (bitwise the same output in our tests of the
paper's encoder), but the block's intermediate tensors stay a few MB instead of 100-200 MB at
100k frames, so they stay in cache and the block's time per frame does not grow with the length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mambava.models.ssm import resolve_backend, selective_scan_fn

MambaState = tuple[torch.Tensor, torch.Tensor]  # conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state)


class Mamba(nn.Module):
    """Selective state-space block: (batch, length, d_model) -> (batch, length, d_model).

    in_proj (no bias) splits into x and the gate z; x goes through a causal depthwise conv1d
    (kernel d_conv, with bias) and SiLU; x_proj gives the input-dependent dt (rank dt_rank), B and
    C; dt_proj lifts dt to d_inner; the selective scan with A = -exp(A_log), skip D, gate silu(z);
    out_proj (no bias) back to d_model.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_backend: str | None = None,
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend  # None: the process default (model.scan_backend)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

        # dt_proj as in mamba-ssm: weights keep the variance of dt at initialisation, and the
        # bias is the inverse softplus of a step size log-uniform in [dt_min, dt_max].
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, std)
            elif dt_init == "random":
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            else:
                raise ValueError(f"dt_init must be 'constant' or 'random', got {dt_init!r}")
            dt = torch.exp(
                torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            ).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.dt_proj.bias._no_reinit = True

        # S4D-real initialisation: A[d, n] = -(n + 1), stored as its log so A stays negative.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True

    # ------------------------------------------------------------------ parallel
    # Frames per piece when inference over a long sequence runs in pieces (see the module doc).
    chunk_frames: int = 2048

    def forward(self, x: torch.Tensor, return_state: bool = False):
        """x: (batch, length, d_model) -> (batch, length, d_model) [, (conv_state, ssm_state)]."""
        length = x.shape[1]
        if not self.uses_pieces(x):
            return self._forward(x, None, return_state)
        out, state = None, None
        for start in range(0, length, self.chunk_frames):
            y, state = self._forward(x[:, start:start + self.chunk_frames], state, True)
            if out is None:
                out = y.new_empty(y.shape[0], length, y.shape[2])
            out[:, start:start + y.shape[1]] = y
        return (out, state) if return_state else out

    def uses_pieces(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` runs ``x`` in pieces (module doc)."""
        return (x.shape[1] > self.chunk_frames and not torch.is_grad_enabled()
                and resolve_backend(self.scan_backend, x.device) != "cuda")  # mamba-ssm: no initial state

    def forward_from(self, x: torch.Tensor, state: MambaState | None) -> tuple[torch.Tensor, MambaState]:
        """One parallel pass over ``x`` continuing from ``state`` (None: the start of the sequence);
        returns the output and the state after ``x``. Not for mamba-ssm's backend."""
        return self._forward(x, state, True)

    def _forward(self, x: torch.Tensor, state: MambaState | None, return_state: bool):
        """The parallel pass over x, continuing from ``state`` (None: from the start)."""
        batch, length, _ = x.shape
        xz = self.in_proj(x).transpose(1, 2)  # (b, 2 d_inner, l)
        xs, z = xz.chunk(2, dim=1)
        if state is None:
            conv_state = F.pad(xs, (self.d_conv - length, 0)) if return_state else None  # last d_conv inputs
            xs = F.silu(self.conv1d(xs)[..., :length])
        else:  # the causal conv continues over the last d_conv - 1 inputs of the state
            xs = torch.cat([state[0][:, :, 1:].to(xs.dtype), xs], dim=2)
            conv_state = xs[:, :, -self.d_conv:] if return_state else None
            xs = F.silu(F.conv1d(xs, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner))
        x_dbl = self.x_proj(xs.transpose(1, 2))  # (b, l, dt_rank + 2 n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (b, d_inner, l); bias goes to the scan
        A = -torch.exp(self.A_log.float())
        res = selective_scan_fn(
            xs, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            return_last_state=return_state, backend=self.scan_backend,
            initial_state=None if state is None else state[1],
        )
        y, ssm_state = res if return_state else (res, None)
        out = self.out_proj(y.transpose(1, 2))
        return (out, (conv_state, ssm_state)) if return_state else out

    # ------------------------------------------------------------------ recurrent
    def allocate_state(self, batch: int, device=None, dtype=torch.float32) -> MambaState:
        """Zero (conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state))."""
        device = device or self.A_log.device
        return (
            torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=dtype),
            torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def step(self, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One frame: x (batch, d_model) -> (batch, d_model) and the new state (not in place)."""
        conv_state, ssm_state = state
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (b, d_inner) each
        conv_state = torch.cat([conv_state[:, :, 1:], xs[:, :, None]], dim=-1)
        xs = (conv_state * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            xs = xs + self.conv1d.bias
        xs = F.silu(xs)
        dt, B, C = torch.split(self.x_proj(xs), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight) + self.dt_proj.bias)  # (b, d_inner)
        A = -torch.exp(self.A_log.float())
        ssm_state = torch.exp(dt[..., None] * A) * ssm_state + (dt * xs)[..., None] * B[:, None, :]
        y = (ssm_state * C[:, None, :]).sum(-1) + self.D * xs
        y = y * F.silu(z)
        return self.out_proj(y), (conv_state, ssm_state)
