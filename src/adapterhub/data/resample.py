"""Band-limited resampling of audio between sampling rates (windowed sinc, Kaiser window), in torch.

The rates reduce to ``up / down = new / orig`` (divided by their gcd). Output sample ``n`` sits at input position
``t_n = n · down / up`` (in input samples) and is

    y[n] = Σ_k x[k] · h(t_n - k),   h(d) = 2 f_c · sinc(2 f_c d) · w(d / W)   for |d| ≤ W, else 0,

with ``sinc(z) = sin(πz) / (πz)``, the cut-off ``f_c = ROLLOFF / 2 · min(1, up / down)`` cycles per input sample
(just below the lower of the two Nyquist frequencies, so nothing above the new Nyquist folds back when
downsampling), the half-width ``W = ZEROS / (2 f_c)`` input samples (``ZEROS`` zero crossings of the sinc on each
side) and the Kaiser window ``w(z) = I0(β √(1 - z²)) / I0(β)``. ``h`` sums to 1 over the integers, so a constant
signal keeps its level. Samples outside the clip count as zero (as ``scipy.signal.resample_poly`` does).

Because ``t_n`` modulo ``down`` repeats every ``up`` outputs, the sum is a polyphase convolution: ``up`` kernels
(one per phase ``p``, taps at input positions ``m · down - W' + i``), one strided ``conv1d`` over the input.

Output length (the rule of ``resample_poly``): ``ceil(N · up / down)`` for ``N`` input samples
(:func:`resampled_length`). Several channels are resampled each on its own (``(channels, samples)`` in, the same
out); mixing stereo down to mono is the WAV reader's job (:func:`adapterhub.data.media.read_audio`).
"""

from __future__ import annotations

import math

import torch

ROLLOFF = 0.95  # the cut-off as a fraction of the lower Nyquist frequency
ZEROS = 16  # zero crossings of the sinc kept on each side
KAISER_BETA = 8.6  # stop band about -85 dB


def ratio(orig_rate: int, new_rate: int) -> tuple[int, int]:
    """``(up, down)``: ``new_rate / orig_rate`` in lowest terms. Both rates must be positive integers (Hz)."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_rate} Hz -> {new_rate} Hz")
    g = math.gcd(orig_rate, new_rate)
    return new_rate // g, orig_rate // g


def resampled_length(length: int, orig_rate: int, new_rate: int) -> int:
    """The number of samples :func:`resample` gives for ``length`` input samples: ``ceil(length · up / down)``."""
    up, down = ratio(orig_rate, new_rate)
    return -(-length * up // down)


def _kernels(up: int, down: int) -> tuple[torch.Tensor, int]:
    """The ``up`` polyphase kernels ``(up, 1, K)`` (float64) and the left padding ``W'`` (input samples): tap ``i``
    of phase ``p`` weighs input ``m · down - W' + i`` for output ``m · up + p``, i.e. ``h(p · down / up + W' - i)``."""
    cutoff = ROLLOFF / 2 * min(1.0, up / down)  # f_c, cycles per input sample
    half = ZEROS / (2 * cutoff)  # W, input samples
    pad = math.ceil(half)  # W'
    taps = down + 2 * pad + 1  # covers t_p < down plus W on each side
    phase = torch.arange(up, dtype=torch.float64).unsqueeze(1) * down / up  # (up, 1): t_p
    d = phase + pad - torch.arange(taps, dtype=torch.float64)  # (up, K): t_p - input offset
    window = torch.special.i0(
        KAISER_BETA * torch.sqrt((1 - (d / half) ** 2).clamp(min=0))
    ) / torch.special.i0(torch.tensor(KAISER_BETA, dtype=torch.float64))
    h = 2 * cutoff * torch.sinc(2 * cutoff * d) * window * (d.abs() <= half)  # (up, K)
    return h.unsqueeze(1), pad


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """``waveform`` (samples,) or (channels, samples) at ``orig_rate`` Hz -> the same at ``new_rate`` Hz, with
    ``ceil(samples · up / down)`` samples, band-limited as the module says. The kernels are built in float64; the
    convolution runs in float32 (float64 for a float64 input, about 10x slower), returned in ``waveform``'s dtype;
    equal rates return ``waveform`` itself."""
    if orig_rate == new_rate:
        return waveform
    up, down = ratio(orig_rate, new_rate)
    squeeze = waveform.dim() == 1
    x = waveform.reshape(1, -1) if squeeze else waveform  # (C, N)
    if x.dim() != 2:
        raise ValueError(
            f"resample takes (samples,) or (channels, samples), got shape {tuple(waveform.shape)}"
        )
    length = x.shape[-1]
    out_len = resampled_length(length, orig_rate, new_rate)
    kernels, pad = _kernels(up, down)  # (up, 1, K)
    blocks = -(-out_len // up)  # M: outputs per phase
    need = (blocks - 1) * down + kernels.shape[-1]  # padded input length the last block reads
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    kernels = kernels.to(compute)
    signal = x.to(compute).unsqueeze(1)  # (C, 1, N)
    signal = torch.nn.functional.pad(signal, (pad, max(0, need - length - pad)))  # (C, 1, >= need)
    phases = torch.nn.functional.conv1d(signal, kernels, stride=down)[..., :blocks]  # (C, up, M)
    y = phases.transpose(1, 2).reshape(x.shape[0], -1)[:, :out_len]  # (C, M·up) -> (C, out_len)
    y = y.to(waveform.dtype)
    return y[0] if squeeze else y
