#!/usr/bin/env python
"""Synthesise spoken digits "zero" .. "nine" with the espeak-ng speech synthesiser and
write them as a ``speech_commands`` data folder.

Every clip is one digit spoken by one *voice variant* (an English espeak-ng voice with a
voice modifier, e.g. ``en-gb-scotland+f3``) at one speed (words per minute) and pitch
(0-99). espeak-ng writes 22050 Hz mono 16-bit WAV; each clip is resampled to 16 kHz
(band-limited, by FFT), its leading and trailing silence is cut (samples below 1 % of the
clip's peak, keeping ``--margin-ms`` on each side), and it is written as 16-bit PCM WAV.

Splits are by voice variant: no voice variant of the valid or test split is heard in
training (``--valid-variants`` / ``--test-variants`` of them, chosen at random with
``--seed``), so the test accuracy measures generalisation to new voices. Output::

    OUT/audio/<variant>/<digit>_s<speed>_p<pitch>.wav
    OUT/{train,valid,test}.tsv      root folder "audio", then path<TAB>digit
    OUT/labels.txt                  zero .. nine (class ids 0 .. 9)
    OUT/summary.json                counts, variants per split, clip durations

Needs the ``espeak-ng`` program (Debian: ``apt-get install espeak-ng``).
"""

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import wave

import numpy as np

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
          "en-029", "en-us-nyc")
MODIFIERS = ("", "m1", "m3", "m5", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "croak")
SPEEDS = (140, 170, 200)
PITCHES = (30, 50, 70)
RATE = 16000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, help="output folder (created)")
    parser.add_argument("--voices", nargs="+", default=list(VOICES), help="espeak-ng voices")
    parser.add_argument("--modifiers", nargs="+", default=list(MODIFIERS),
                        help="espeak-ng voice modifiers ('' for none, written as 'none')")
    parser.add_argument("--speeds", nargs="+", type=int, default=list(SPEEDS), help="words per minute")
    parser.add_argument("--pitches", nargs="+", type=int, default=list(PITCHES), help="pitches 0-99")
    parser.add_argument("--valid-variants", type=int, default=6, help="voice variants held out for valid")
    parser.add_argument("--test-variants", type=int, default=12, help="voice variants held out for test")
    parser.add_argument("--margin-ms", type=float, default=20.0, help="silence kept before and after the word")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split of the voice variants")
    parser.add_argument("--espeak", default="espeak-ng", help="the espeak-ng program")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.modifiers = ["" if m in ("", "none") else m for m in args.modifiers]
    for pitch in args.pitches:
        if not 0 <= pitch <= 99:
            parser.error(f"--pitches: {pitch} is not in 0..99")
    for speed in args.speeds:
        if not 80 <= speed <= 450:
            parser.error(f"--speeds: {speed} is not in 80..450 words per minute (espeak-ng's range)")
    variants = len(args.voices) * len(args.modifiers)
    if args.valid_variants < 1 or args.test_variants < 1 or args.valid_variants + args.test_variants >= variants:
        parser.error(f"--valid-variants {args.valid_variants} and --test-variants {args.test_variants} must be "
                     f"positive and leave training variants among the {variants} voice variants")
    return args


def synthesise(espeak: str, voice: str, speed: int, pitch: int, text: str):
    """(samples as float64 in [-1, 1), sample rate) of espeak-ng speaking ``text``."""
    result = subprocess.run([espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                            capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"{espeak} -v {voice} failed ({result.returncode}): "
                           f"{result.stderr.decode(errors='replace').strip()}")
    with wave.open(io.BytesIO(result.stdout)) as handle:
        if handle.getsampwidth() != 2 or handle.getnchannels() != 1:
            raise RuntimeError(f"{espeak} wrote {handle.getnchannels()} channels of "
                               f"{8 * handle.getsampwidth()}-bit samples; expected 16-bit mono")
        rate = handle.getframerate()
        frames = handle.readframes(handle.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0, rate


def resample(samples: np.ndarray, rate: int, target: int = RATE) -> np.ndarray:
    """Band-limited resampling by FFT (the spectrum is cut or zero-extended)."""
    if rate == target:
        return samples
    count = int(round(len(samples) * target / rate))
    spectrum = np.fft.rfft(samples)
    bins = count // 2 + 1
    if bins <= len(spectrum):
        spectrum = spectrum[:bins]
    else:
        spectrum = np.pad(spectrum, (0, bins - len(spectrum)))
    return np.fft.irfft(spectrum, n=count) * (count / len(samples))


def trim(samples: np.ndarray, margin: int) -> np.ndarray:
    """Cut the leading and trailing samples below 1 % of the peak, keeping ``margin``."""
    loud = np.nonzero(np.abs(samples) >= 0.01 * np.abs(samples).max())[0]
    if not len(loud):
        return samples
    return samples[max(0, loud[0] - margin): loud[-1] + 1 + margin]


def write_wav(path: str, samples: np.ndarray) -> None:
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(RATE)
        handle.writeframes(pcm.tobytes())


def variant_name(voice: str, modifier: str) -> str:
    return f"{voice}+{modifier}" if modifier else voice


def split_variants(variants, valid: int, test: int, seed: int):
    shuffled = list(variants)
    random.Random(seed).shuffle(shuffled)
    return {"valid": sorted(shuffled[:valid]), "test": sorted(shuffled[valid:valid + test]),
            "train": sorted(shuffled[valid + test:])}


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which(args.espeak) is None:
        sys.exit(f"error: {args.espeak} not found; install it (Debian: apt-get install espeak-ng)")
    variants = [variant_name(v, m) for v in args.voices for m in args.modifiers]
    splits = split_variants(variants, args.valid_variants, args.test_variants, args.seed)
    margin = int(round(args.margin_ms * RATE / 1000))
    jobs = [(split, variant, digit, speed, pitch)
            for split, names in splits.items() for variant in names for digit in DIGITS
            for speed in args.speeds for pitch in args.pitches]
    try:
        from tqdm import tqdm
        progress = tqdm(jobs, desc="synthesising", unit="clip", disable=args.no_progress)
    except ImportError:  # pragma: no cover
        progress = jobs
    os.makedirs(os.path.join(args.out_dir, "audio"), exist_ok=True)
    rows = {split: [] for split in splits}
    durations = []
    for split, variant, digit, speed, pitch in progress:
        samples, rate = synthesise(args.espeak, variant, speed, pitch, digit)
        samples = trim(resample(samples, rate), margin)
        relative = os.path.join(variant, f"{digit}_s{speed}_p{pitch}.wav")
        os.makedirs(os.path.join(args.out_dir, "audio", variant), exist_ok=True)
        write_wav(os.path.join(args.out_dir, "audio", relative), samples)
        rows[split].append(f"{relative}\t{digit}")
        durations.append(len(samples) / RATE)
    for split, lines in rows.items():
        with open(os.path.join(args.out_dir, f"{split}.tsv"), "w") as handle:
            handle.write("\n".join(["audio"] + lines) + "\n")
    with open(os.path.join(args.out_dir, "labels.txt"), "w") as handle:
        handle.write("\n".join(DIGITS) + "\n")
    summary = {
        "clips": {split: len(lines) for split, lines in rows.items()},
        "variants": splits,
        "speeds": args.speeds, "pitches": args.pitches,
        "duration_seconds": {"min": round(min(durations), 3), "median": round(float(np.median(durations)), 3),
                             "p95": round(float(np.percentile(durations, 95)), 3),
                             "max": round(max(durations), 3)},
    }
    with open(os.path.join(args.out_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    print(json.dumps({k: summary[k] for k in ("clips", "duration_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
