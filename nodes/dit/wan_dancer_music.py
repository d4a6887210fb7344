"""Wan-Dancer's music features: per 30-fps audio frame the 35 librosa features the official ``get_music_base_feature``
(Wan-Video/Wan-Dancer ``gen_video/gen_video_global.py``, Apache-2.0) computes, reimplemented with numpy / scipy
after librosa 0.11's algorithms (ISC; librosa is not imported).

The official recipe: the track is loaded as mono at ``30 · 512 = 15360`` Hz, and then analysed *as if* it were at
22050 Hz with a hop of 512 (so each analysis frame is one 30-fps video frame). Per frame (columns in this order):

1. the onset strength (``librosa.onset.onset_strength``: the positive first difference of the 128-band dB mel
   power spectrogram (2048-point Hann STFT, zero-padded centred frames; Slaney mel, dB floored 80 dB below the
   peak), averaged over the bands, delayed by 3 frames);
2. 20 MFCCs of that dB mel spectrogram (orthonormal DCT-II);
3. 12 CENS chroma (``chroma_cens``: a 7-octave, 36-bins-per-octave constant-Q magnitude from C1, tuned by the
   ``piptrack`` estimate; folded to 12 pitch classes, L1-normalized, quantized at 0.4 / 0.2 / 0.1 / 0.05, smoothed
   by a 43-point Hann window, L2-normalized);
4. onset peaks (``onset_detect``: the min-max normalized onset strength, a peak where it is the maximum of the
   1 frame before to the frame itself, at least 0.07 above the mean of 4 frames before to 4 after, 1 frame apart);
5. beats (``beat_track`` with ``tightness=100``, started at the tempo ``librosa.beat.tempo`` finds on the track
   loaded at 22050 Hz: an autocorrelation tempogram of 8 s windows, averaged, weighted by a log-normal prior
   around 120 BPM; then the tempo at that start, then the dynamic-programming beat tracker, weak beats trimmed).

Where this differs from librosa: the constant-Q transform halves the sample rate per octave with scipy's
polyphase resampler (a Kaiser-windowed FIR) where librosa uses soxr; the loading resamples with torchaudio's sinc
resampler (ComfyUI's) where librosa uses soxr. Everything else follows librosa's float32 arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.signal

#: the official analysis: hop 512 at "22050 Hz" on audio that is really at 30 · 512 Hz
HOP = 512
ANALYSIS_RATE = 22050
BASE_FPS = 30
LOAD_RATE = BASE_FPS * HOP
N_FFT = 2048
N_MELS = 128
N_MFCC = 20
FEATURES = 35
C1 = 32.70319566257483
TINY32 = np.finfo(np.float32).tiny


# -- spectra ----------------------------------------------------------------------------------------

def _frames(y: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Centred frames ``[n_fft, 1 + len // hop]`` of ``y`` zero-padded by ``n_fft // 2`` on both sides."""
    pad = np.pad(y, n_fft // 2, mode="constant")
    count = 1 + (len(pad) - n_fft) // hop
    return np.lib.stride_tricks.as_strided(pad, shape=(n_fft, count), strides=(pad.strides[0], pad.strides[0] * hop))


def stft(y: np.ndarray, n_fft: int = N_FFT, hop: int = HOP, window: str | None = "hann") -> np.ndarray:
    """librosa's centred STFT ``[1 + n_fft / 2, frames]`` (periodic Hann, or no window)."""
    frames = _frames(y, n_fft, hop).astype(np.float64)  # librosa multiplies by a float64 window: float64 FFT
    if window is not None:
        frames = frames * scipy.signal.get_window(window, n_fft, fftbins=True)[:, None]
    return np.fft.rfft(frames, axis=0).astype(np.complex64)


def _hz_to_mel(f):
    f = np.asanyarray(f, dtype=float)
    mels = f / (200.0 / 3)
    log = f >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(f, 1e-300) / 1000.0) / (np.log(6.4) / 27.0), mels)


def _mel_to_hz(m):
    m = np.asanyarray(m, dtype=float)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), m * (200.0 / 3))


def mel_filters(sr: float, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """The Slaney-normalized mel filterbank ``[n_mels, 1 + n_fft / 2]`` (float32), 0 Hz to ``sr / 2``."""
    freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, freqs)
    weights = np.zeros((n_mels, len(freqs)), dtype=np.float32)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights


def power_to_db(power: np.ndarray, amin: float = 1e-10, top_db: float = 80.0) -> np.ndarray:
    db = 10.0 * np.log10(np.maximum(amin, power))
    return np.maximum(db, db.max() - top_db)


def mel_db(y: np.ndarray, sr: float = ANALYSIS_RATE) -> np.ndarray:
    """The dB mel power spectrogram ``[128, frames]`` onset strength and MFCCs share."""
    power = np.abs(stft(y)) ** 2
    return power_to_db(np.einsum("mf,ft->mt", mel_filters(sr), power, optimize=True))


def onset_strength(db: np.ndarray, lag: int = 1) -> np.ndarray:
    """Mean positive difference over the bands, padded in front by ``lag + n_fft / (2 · hop)`` frames."""
    env = np.maximum(0.0, db[:, lag:] - db[:, :-lag]).mean(axis=0)
    return np.pad(env, (lag + N_FFT // (2 * HOP), 0))[:db.shape[1]]


def mfcc(db: np.ndarray, n: int = N_MFCC) -> np.ndarray:
    return scipy.fft.dct(db, axis=0, type=2, norm="ortho")[:n]


# -- tuning and chroma ------------------------------------------------------------------------------

def _localmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    x = np.moveaxis(x, axis, 0)
    out = np.zeros(x.shape, dtype=bool)
    out[1:-1] = (x[1:-1] > x[:-2]) & (x[1:-1] >= x[2:])
    out[-1] = x[-1] > x[-2]
    return np.moveaxis(out, 0, axis)


def estimate_tuning(y: np.ndarray, sr: float, bins_per_octave: int) -> float:
    """librosa's ``estimate_tuning`` (``piptrack`` peaks 150 – 4000 Hz above a tenth of each frame's maximum, their
    median-or-louder pitches' deviation histogram at 0.01 resolution)."""
    mag = np.abs(stft(y, N_FFT, N_FFT // 4))
    freqs = np.linspace(0, sr / 2, 1 + N_FFT // 2)
    avg = np.gradient(mag, axis=0)
    a = mag[2:] + mag[:-2] - 2 * mag[1:-1]
    b = (mag[2:] - mag[:-2]) / 2
    shift = np.zeros_like(mag)
    ok = np.abs(b) < np.abs(a)
    shift[1:-1][ok] = -b[ok] / a[ok]
    band = ((150.0 <= freqs) & (freqs < min(4000.0, sr / 2)))[:, None]
    idx = np.nonzero(band & _localmax(mag * (mag > 0.1 * mag.max(axis=0, keepdims=True)), axis=0))
    pitch = np.zeros_like(mag)
    level = np.zeros_like(mag)
    pitch[idx] = (idx[0] + shift[idx]) * float(sr) / N_FFT
    level[idx] = mag[idx] + (0.5 * avg * shift)[idx]
    found = pitch > 0
    threshold = np.median(level[found]) if found.any() else 0.0
    pitches = pitch[(level >= threshold) & found]
    pitches = pitches[pitches > 0]
    if not pitches.size:
        return 0.0
    residual = np.mod(bins_per_octave * np.log2(pitches / (440.0 / 16)), 1.0)
    residual[residual >= 0.5] -= 1.0
    counts, edges = np.histogram(residual, np.linspace(-0.5, 0.5, int(np.ceil(1.0 / 0.01)) + 1))
    return float(edges[np.argmax(counts)])


def _sparsify_rows(x: np.ndarray, quantile: float = 0.01) -> np.ndarray:
    """Each row with its smallest magnitudes (together under ``quantile`` of the row's L1 norm) set to 0."""
    mags = np.abs(x)
    norms = mags.sum(axis=1, keepdims=True)
    order = np.sort(mags, axis=1)
    cut = np.argmin(np.cumsum(order / norms, axis=1) < quantile, axis=1)
    keep = mags >= order[np.arange(len(x)), cut][:, None]
    return np.where(keep, x, 0)


def halve_rate(y: np.ndarray) -> np.ndarray:
    """``y`` at half its rate (amplitude × √2, librosa's ``scale=True``), ``ceil(len / 2)`` samples."""
    out = scipy.signal.resample_poly(y.astype(np.float64), 1, 2, window=("kaiser", 14.0), padtype="constant")
    out = out[:int(np.ceil(len(y) / 2))]
    return (out * np.sqrt(2.0)).astype(y.dtype)


@dataclass(frozen=True)
class CqtPlan:
    freqs: np.ndarray
    alpha: np.ndarray
    lengths: np.ndarray


def _cqt_plan(sr: float, n_bins: int, bins_per_octave: int, tuning: float) -> CqtPlan:
    fmin = C1 * 2.0 ** (tuning / bins_per_octave)
    freqs = fmin * 2.0 ** (np.arange(n_bins) / bins_per_octave)
    logf = np.log2(freqs)
    bpo = np.empty_like(freqs)
    bpo[0], bpo[-1] = 1 / (logf[1] - logf[0]), 1 / (logf[-1] - logf[-2])
    bpo[1:-1] = 2 / (logf[2:] - logf[:-2])
    alpha = (2.0 ** (2 / bpo) - 1) / (2.0 ** (2 / bpo) + 1)
    return CqtPlan(freqs, alpha, (1.0 / alpha) * sr / freqs)


def _octave_basis(freqs: np.ndarray, alpha: np.ndarray, sr: float) -> tuple[np.ndarray, int]:
    """One octave's frequency-domain wavelet filters ``[bins, 1 + n_fft / 2]`` (complex64, sparsified)."""
    lengths = (1.0 / alpha) * sr / freqs
    filters = []
    for length, freq in zip(lengths, freqs):
        t = np.arange(-length // 2, length // 2, dtype=float)
        sig = np.exp(1j * t * 2 * np.pi * freq / sr)
        sig = sig * scipy.signal.get_window("hann", len(sig), fftbins=True)
        filters.append(sig / max(np.abs(sig).sum(), np.finfo(float).tiny))
    n_fft = int(2.0 ** np.ceil(np.log2(max(lengths))))
    basis = np.zeros((len(filters), n_fft), dtype=np.complex64)
    for k, sig in enumerate(filters):
        left = (n_fft - len(sig)) // 2
        basis[k, left:left + len(sig)] = sig
    basis = (basis * (lengths / float(n_fft))[:, None]).astype(np.complex64)
    return _sparsify_rows(np.fft.fft(basis, n=n_fft, axis=1)[:, :n_fft // 2 + 1]), n_fft


def cqt_magnitude(y: np.ndarray, sr: float, hop: int, n_bins: int, bins_per_octave: int, tuning: float) -> np.ndarray:
    """librosa's ``cqt`` magnitude ``[n_bins, frames]``: octave by octave from the top, the rate halved after each."""
    plan = _cqt_plan(sr, n_bins, bins_per_octave, tuning)
    octaves = int(np.ceil(n_bins / bins_per_octave))
    per = min(bins_per_octave, n_bins)
    responses = []
    my_y, my_sr, my_hop = y, float(sr), hop
    for i in range(octaves):
        sl = slice(-per, None) if i == 0 else slice(-per * (i + 1), -per * i)
        basis, n_fft = _octave_basis(plan.freqs[sl], plan.alpha[sl], my_sr)
        basis = basis * np.float32(np.sqrt(sr / my_sr))
        responses.append(basis @ stft(my_y, n_fft, my_hop, window=None))
        if my_hop % 2 == 0:
            my_hop //= 2
            my_sr /= 2.0
            my_y = halve_rate(my_y)
    cols = min(r.shape[1] for r in responses)
    out = np.empty((n_bins, cols), dtype=np.complex64)
    end = n_bins
    for r in responses:
        if end < r.shape[0]:
            out[:end] = r[-end:, :cols]
        else:
            out[end - r.shape[0]:end] = r[:, :cols]
        end -= r.shape[0]
    return np.abs(out) / np.sqrt(plan.lengths)[:, None].astype(np.float32)


def _normalize(x: np.ndarray, norm: float) -> np.ndarray:
    length = (np.sum(np.abs(x).astype(float) ** norm, axis=0, keepdims=True) ** (1.0 / norm))
    length[length < np.finfo(x.dtype).tiny] = 1.0
    return (x / length).astype(x.dtype)


def chroma_cens(y: np.ndarray, sr: float = ANALYSIS_RATE, hop: int = HOP, n_chroma: int = 12, octaves: int = 7,
                bins_per_octave: int = 36, smooth: int = 41) -> np.ndarray:
    """librosa's ``chroma_cens`` ``[12, frames]``."""
    tuning = estimate_tuning(y, sr, bins_per_octave)
    n_bins = octaves * bins_per_octave
    cqt = cqt_magnitude(y, sr, hop, n_bins, bins_per_octave, tuning)
    merge = bins_per_octave // n_chroma
    fold = np.roll(np.repeat(np.eye(n_chroma), merge, axis=1), -(merge // 2), axis=1)
    fold = np.tile(fold, octaves)[:, :n_bins].astype(np.float32)  # C1 is pitch class 0: no roll
    chroma = _normalize(np.einsum("cf,ft->ct", fold, cqt, optimize=True), 1)
    quant = np.zeros_like(chroma)
    for step in (0.4, 0.2, 0.1, 0.05):
        quant += (chroma > step) * 0.25
    win = scipy.signal.get_window("hann", smooth + 2, fftbins=False)
    win = win / win.sum()
    return _normalize(scipy.ndimage.convolve(quant, win[None], mode="constant"), 2)


# -- onsets, tempo and beats ------------------------------------------------------------------------

def peak_pick(x: np.ndarray, pre_max: int, post_max: int, pre_avg: int, post_avg: int, delta: float,
              wait: int) -> np.ndarray:
    """librosa's greedy peak picker: indices of the peaks of ``x``."""
    n_all = len(x)
    peaks = np.zeros(n_all, dtype=bool)
    peaks[0] = x[0] >= np.max(x[:min(post_max, n_all)]) and x[0] >= np.mean(x[:min(post_avg, n_all)]) + delta
    n = wait + 1 if peaks[0] else 1
    while n < n_all:
        if x[n] != np.max(x[max(0, n - pre_max):min(n + post_max, n_all)]):
            n += 1
            continue
        if x[n] < np.mean(x[max(0, n - pre_avg):min(n + post_avg, n_all)]) + delta:
            n += 1
            continue
        peaks[n] = True
        n += wait + 1
    return np.flatnonzero(peaks)


def onset_peaks(env: np.ndarray, sr: float = ANALYSIS_RATE, hop: int = HOP) -> np.ndarray:
    """librosa's ``onset_detect`` on an onset strength envelope (frames)."""
    x = env - env.min()
    x = x / (x.max() + np.finfo(x.dtype).tiny)
    if not x.any() or not np.all(np.isfinite(x)):
        return np.array([], dtype=int)
    frames = lambda seconds: int(np.ceil(seconds * sr // hop))  # noqa: E731
    return peak_pick(x, pre_max=frames(0.03), post_max=frames(0.0) + 1, pre_avg=frames(0.10),
                     post_avg=frames(0.10) + 1, delta=0.07, wait=frames(0.03))


def tempo(env: np.ndarray, sr: float = ANALYSIS_RATE, hop: int = HOP, start_bpm: float = 120.0,
          std_bpm: float = 1.0, ac_size: float = 8.0, max_tempo: float = 320.0) -> float:
    """librosa's ``tempo``: the autocorrelation tempogram (Hann windows of ``ac_size`` seconds, centred with linear
    ramps, max-normalized per frame) averaged over time, weighted by a log-normal prior."""
    win = int(ac_size * sr) // hop
    n = len(env)
    padded = np.pad(env, (win // 2, win // 2), mode="linear_ramp", end_values=(0, 0))
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[:n].T
    frames = frames * scipy.signal.get_window("hann", win, fftbins=True)[:, None]
    size = scipy.fft.next_fast_len(2 * win - 1, real=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, n=size, axis=0)) ** 2, n=size, axis=0)[:win]
    peak = np.max(np.abs(ac), axis=0, keepdims=True)
    peak[peak < np.finfo(ac.dtype).tiny] = 1.0
    mean = (ac / peak).mean(axis=1)
    bpms = np.full(win, np.inf)
    bpms[1:] = 60.0 * sr / (hop * np.arange(1.0, win))
    with np.errstate(divide="ignore"):
        logprior = -0.5 * ((np.log2(bpms) - np.log2(start_bpm)) / std_bpm) ** 2
    logprior[:int(np.argmax(bpms < max_tempo))] = -np.inf
    return float(bpms[np.argmax(np.log1p(1e6 * mean) + logprior)])


def beat_track(env: np.ndarray, sr: float = ANALYSIS_RATE, hop: int = HOP, start_bpm: float = 120.0,
               tightness: float = 100.0) -> np.ndarray:
    """librosa's ``beat_track`` (frames of the beats)."""
    if not env.any():
        return np.array([], dtype=int)
    bpm = tempo(env, sr, hop, start_bpm)
    fpb = float(np.round(sr / hop * 60.0 / bpm))
    onsets = env / (env.std(ddof=1) + np.finfo(env.dtype).tiny)
    window = np.exp(-0.5 * (np.arange(-fpb, fpb + 1) * 32.0 / fpb) ** 2)
    local = np.convolve(onsets, window, mode="full")[len(window) // 2:len(window) // 2 + len(onsets)]
    local = local.astype(env.dtype)
    n = len(local)
    backlink = np.full(n, -1, dtype=np.int64)
    cumscore = np.zeros(n, dtype=env.dtype)
    thresh = 0.01 * local.max()
    first = True
    tight = np.float32(tightness)
    log_fpb = np.log(np.float32(fpb))
    for i in range(n):
        best, where = -np.inf, -1
        for loc in range(int(i - np.round(fpb / 2)), int(i - 2 * fpb - 1), -1):
            if loc < 0:
                break
            score = cumscore[loc] - tight * (np.log(i - loc) - log_fpb) ** 2
            if score > best:
                best, where = score, loc
        cumscore[i] = local[i] + best if where >= 0 else local[i]
        if first and local[i] < thresh:
            backlink[i] = -1
        else:
            backlink[i] = where
            first = False
    peaks = _localmax(cumscore)
    threshold = 0.5 * np.median(cumscore[peaks]) if peaks.any() else 0.0
    tail = n - 1
    for k in range(n - 1, -1, -1):
        if peaks[k] and cumscore[k] >= threshold:
            tail = k
            break
    beats = np.zeros(n, dtype=bool)
    k = tail
    while k >= 0:
        beats[k] = True
        k = backlink[k]
    smooth = np.convolve(local[beats], np.hanning(5))[2:n + 2]
    cut = 0.5 * np.sqrt((smooth ** 2).mean())
    k = 0
    while k < n and local[k] <= cut:
        beats[k] = False
        k += 1
    k = n - 1
    while k >= 0 and local[k] <= cut:
        beats[k] = False
        k -= 1
    return np.flatnonzero(beats)


# -- the features -----------------------------------------------------------------------------------

def music_features(y: np.ndarray, start_bpm: float) -> np.ndarray:
    """``[frames, 35]`` (float32) for mono ``y`` at 15360 Hz; ``start_bpm`` from :func:`start_tempo`."""
    y = np.ascontiguousarray(y, dtype=np.float32)
    db = mel_db(y)
    env = onset_strength(db)
    peaks = np.zeros_like(env, dtype=np.float32)
    peaks[onset_peaks(env)] = 1.0
    beats = np.zeros_like(env, dtype=np.float32)
    beats[beat_track(env, start_bpm=start_bpm)] = 1.0
    chroma = chroma_cens(y)
    return np.concatenate([env[:, None], mfcc(db).T, chroma.T, peaks[:, None], beats[:, None]],
                          axis=-1).astype(np.float32)


def start_tempo(y22050: np.ndarray) -> float:
    """``librosa.beat.tempo(y=...)`` of mono audio at 22050 Hz (the beat tracker's starting tempo)."""
    y = np.ascontiguousarray(y22050, dtype=np.float32)
    return tempo(onset_strength(mel_db(y)))
