"""The embedded default corpus: speech-like audio from a source-filter synthesiser.

Speech is a glottal source shaped by the vocal tract. Here the source is a Rosenberg glottal pulse
train whose pitch follows a contour (declination plus a slow wobble and jitter), and the tract is a
cascade of three formant resonators (Klatt's second-order sections) switched between vowels, one
syllable after another, with pauses of breath noise between them. Each clip has one "voice" (a
pitch range and a vocal-tract length). The pretraining clips' vowels follow a Markov chain
(`PHONOTACTICS`), as a language's sounds follow each other. Files are written as real WAV and FLAC,
so the corpus goes through the same reader as users' data.

The labelled set for `omnimask eval` asks for the order of three vowels (`ORDERED_VOWELS`): every
labelled clip says /a/, /i/ and /u/ once each, in one of their six orders, in a random voice. Each
class has the same sounds in the same proportions, so a clip's average spectrum (what a random
encoder's mean-pooled features mostly keep) says little about its class, and the voice, which
shifts every formant by up to 30%, is a nuisance to ignore. Telling the orders apart takes
features that know a frame's neighbours, which masked prediction over context has to learn.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from omnimask.data import default_data_dir, generate_once

SAMPLE_RATE = 16000
CORPUS_VERSION = "speech-v3"
#: (name, median pitch in Hz, formant scale): a shorter vocal tract raises every formant.
VOICES = (("bass", 95.0, 1.0), ("tenor", 135.0, 1.06), ("alto", 205.0, 1.16), ("child", 280.0, 1.3))
#: Peterson & Barney's average formants (F1, F2, F3) of adult male vowels, in Hz.
VOWELS = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
BANDWIDTHS = (60.0, 90.0, 150.0)
#: Phonotactics of the pretraining clips: the vowel after each vowel is its preferred successor
#: here `PREFERRED_SHARE` of the time, any other vowel (itself included) otherwise. Speech is not
#: a string of independent sounds (phone n-grams, words), and w2v-BERT's MLM module is a model of
#: exactly that dependence over the quantizer's units: with independent vowels (corpus v2) a
#: masked vowel cannot be told from its neighbours, the pretext task rewards no context, and
#: pretraining lost the order information random init has (plugin README).
PHONOTACTICS = {"a": "e", "e": "i", "i": "o", "o": "u", "u": "a"}
PREFERRED_SHARE = 0.5
#: the vowels whose order labels the evaluation clips: the corners of the vowel triangle, told
#: apart in every voice.
ORDERED_VOWELS = ("a", "i", "u")
ORDERS = tuple(itertools.permutations(ORDERED_VOWELS))
#: clips per voice of the pretraining split (random vowel sequences), and its seed
PRETRAIN = (100, 0)
#: labelled split name -> (clips per vowel order, seed)
LABELLED_SPLITS = {"eval_train": (24, 1), "eval_test": (12, 2)}


@dataclass(frozen=True)
class Utterance:
    """What one synthetic clip says: its voice, its vowel sequence and their timing."""

    voice: int
    vowels: tuple[str, ...]
    waveform: np.ndarray


def rosenberg_pulse(
    phase: np.ndarray, open_phase: float = 0.4, closing: float = 0.16
) -> np.ndarray:
    """Glottal flow over one period as a function of phase in [0, 1): a raised-cosine opening,
    a quarter-cosine closing, then the closed phase."""
    opening = 0.5 * (1.0 - np.cos(np.pi * phase / open_phase))
    closing_part = np.cos(0.5 * np.pi * (phase - open_phase) / closing)
    return np.where(
        phase < open_phase,
        opening,
        np.where(phase < open_phase + closing, closing_part, 0.0),
    )


def glottal_source(pitch: np.ndarray) -> np.ndarray:
    """Differentiated glottal flow (lip radiation) for a per-sample pitch contour in Hz."""
    phase = np.cumsum(pitch / SAMPLE_RATE) % 1.0
    flow = rosenberg_pulse(phase)
    return np.diff(flow, prepend=flow[0])


def resonator_response(frequency: float, bandwidth: float, taps: int) -> np.ndarray:
    """Impulse response of Klatt's resonator `y[n] = A x[n] + B y[n-1] + C y[n-2]`, in closed
    form: `A r^n sin((n+1) theta) / sin(theta)` with pole radius `r = exp(-pi bw T)` and angle
    `theta = 2 pi f T`; `A` gives unity gain at DC. After `taps` samples it has decayed below
    1e-6 for the bandwidths used here, so truncating it changes nothing audible."""
    period = 1.0 / SAMPLE_RATE
    radius = np.exp(-np.pi * bandwidth * period)
    theta = 2 * np.pi * frequency * period
    gain = 1.0 - 2 * radius * np.cos(theta) + radius**2
    n = np.arange(taps)
    return gain * radius**n * np.sin((n + 1) * theta) / np.sin(theta)


def formant_filter(signal: np.ndarray, formants: tuple[float, ...], taps: int = 1024) -> np.ndarray:
    """A cascade of resonators, one per (formant, bandwidth), applied as one FFT convolution
    (running the recursive filters sample by sample in Python would dominate generation time)."""
    size = 1 << (len(signal) + len(formants) * taps).bit_length()
    spectrum = np.fft.rfft(signal, size)
    for frequency, bandwidth in zip(formants, BANDWIDTHS):
        spectrum *= np.fft.rfft(resonator_response(frequency, bandwidth, taps), size)
    return np.fft.irfft(spectrum, size)[: len(signal)]


def vowel_sequence(rng: np.random.Generator, count: int) -> tuple[str, ...]:
    """`count` vowels from a first-order Markov chain (`PHONOTACTICS`): the first uniform, each
    next one drawn given the one before."""
    names = list(VOWELS)
    vowels = [str(rng.choice(names))]
    for _ in range(count - 1):
        preferred = PHONOTACTICS[vowels[-1]]
        rest = (1.0 - PREFERRED_SHARE) / (len(names) - 1)
        probs = [PREFERRED_SHARE if name == preferred else rest for name in names]
        vowels.append(str(rng.choice(names, p=probs)))
    return tuple(vowels)


def synthesize(
    voice: int, rng: np.random.Generator, vowels: tuple[str, ...] | None = None
) -> Utterance:
    """One clip of `vowels` (by default 3-6 from `vowel_sequence`) as syllables with pauses, in
    voice `voice`, about 0.7-2.6 s long."""
    _, median_pitch, scale = VOICES[voice]
    if vowels is None:
        vowels = vowel_sequence(rng, int(rng.integers(3, 7)))
    syllables = len(vowels)
    durations = rng.uniform(0.18, 0.35, size=syllables)
    pauses = rng.uniform(0.03, 0.12, size=syllables + 1)
    total = int((durations.sum() + pauses.sum()) * SAMPLE_RATE)
    time = np.arange(total) / SAMPLE_RATE
    # Declination from 1.1x to 0.9x of the median pitch, a slow wobble and a little jitter.
    contour = np.linspace(1.1, 0.9, total) * (
        1.0 + 0.06 * np.sin(2 * np.pi * rng.uniform(1.5, 4.0) * time + rng.uniform(0, 2 * np.pi))
    )
    pitch = median_pitch * rng.uniform(0.92, 1.08) * contour
    pitch *= 1.0 + 0.01 * rng.standard_normal(total)
    source = glottal_source(pitch)
    wave = 0.002 * rng.standard_normal(total)  # breath and room noise
    start = int(pauses[0] * SAMPLE_RATE)
    for vowel, duration, pause in zip(vowels, durations, pauses[1:]):
        length = int(duration * SAMPLE_RATE)
        segment = source[start : start + length] + 0.02 * rng.standard_normal(length)
        formants = tuple(f * scale * rng.uniform(0.95, 1.05) for f in VOWELS[vowel])
        voiced = formant_filter(segment, formants)
        envelope = np.hanning(length) ** 0.5
        wave[start : start + length] += voiced * envelope / (np.abs(voiced).max() + 1e-9)
        start += length + int(pause * SAMPLE_RATE)
    wave = 0.5 * wave / np.abs(wave).max()
    return Utterance(voice, vowels, wave.astype(np.float32))


def write_clip(folder: Path, index: int, utterance: Utterance) -> None:
    """`folder/clip_XXXX.{wav,flac}`: even clips as 16-bit WAV, odd ones as FLAC."""
    suffix = "wav" if index % 2 == 0 else "flac"
    path = folder / f"clip_{index:04d}.{suffix}"
    soundfile.write(str(path), utterance.waveform, SAMPLE_RATE, subtype="PCM_16")


def write_pretrain_split(folder: Path, clips_per_voice: int, seed: int) -> None:
    """`folder/<voice>/clip_XXXX.*`: random vowel sequences in each voice."""
    rng = np.random.default_rng(seed)
    for voice, (name, _, _) in enumerate(VOICES):
        (folder / name).mkdir(parents=True)
        for index in range(clips_per_voice):
            write_clip(folder / name, index, synthesize(voice, rng))


def write_labelled_split(folder: Path, clips_per_order: int, seed: int) -> None:
    """`folder/<a-i-u>/clip_XXXX.*`: each order of `ORDERED_VOWELS`, in random voices."""
    rng = np.random.default_rng(seed)
    for order in ORDERS:
        (folder / "-".join(order)).mkdir(parents=True)
        for index in range(clips_per_order):
            voice = int(rng.integers(len(VOICES)))
            write_clip(folder / "-".join(order), index, synthesize(voice, rng, order))


def write_corpus(folder: Path) -> None:
    """The pretraining split and the labelled splits, into `folder`."""
    write_pretrain_split(folder / "pretrain", *PRETRAIN)
    for split, (clips, seed) in LABELLED_SPLITS.items():
        write_labelled_split(folder / split, clips, seed)


def default_corpus() -> Path:
    """The generated corpus folder (with `pretrain`, `eval_train`, `eval_test`), created on first
    use (`omnimask.data.generate_once`: staged and renamed, so processes that race to create it
    never see a half-written corpus)."""
    return generate_once(default_data_dir("audio") / CORPUS_VERSION, write_corpus)
