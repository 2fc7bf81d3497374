#!/usr/bin/env python
"""Convert an image data set to the pixel-sequence files of the ``lra-image`` task.

Input (``--input``), one split per call:

* a folder with one sub-folder per class, ``ROOT/<class>/<image>``: PNG/JPEG/... are read
  with Pillow (a clear error if it is not installed); PGM/PPM (P2, P3, P5, P6) are read
  by a small built-in parser and need no extra package.  Images are taken in sorted
  order (class, then file name);
* a numpy ``.npz`` with ``x`` (N x H x W, or N x H x W x C with C = 1, 3 or 4; integer
  pixels 0-255) and ``y`` (N integer labels).

Every image is converted to grey-scale with ITU-R BT.601 luma,
``Y = round(0.299 R + 0.587 G + 0.114 B)`` (halves round up; an alpha channel is
dropped), optionally resized (``--resize HEIGHT WIDTH``, bilinear, Pillow needed), and
written row by row.

Output (``--out-dir``):

* ``{split}.input``: one image per line, H*W integers 0-255 separated by single spaces
  (row-major: first row left to right, then the second row, ...);
* ``{split}.label``: one integer class id per line;
* ``classes.txt`` (folder input whose class folders are not all integers): class names,
  line ``i`` = class id ``i``.  The class ids come from the sorted folder names of the
  first split converted; later splits reuse ``classes.txt`` (an unknown class is an
  error), so convert ``train`` first.  Folders named by integers are used as the ids.
* ``{split}.input.npy`` as well with ``--npy``: the same pixels as a uint8 N x (H*W)
  array, which ``lra-image`` memory-maps instead of parsing the text (for large sets).

The files of a call appear together once the whole split is converted; a failure leaves
``--out-dir`` as it was.
"""

import argparse
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np

from atomic_output import AtomicOutputs
from text_input import read_text

PNM_SUFFIXES = {".pgm", ".ppm", ".pnm"}
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


# --------------------------------------------------------------------------- reading

def _pnm_tokens(data: bytes, start: int, count: int) -> Tuple[List[int], int]:
    """``count`` whitespace-separated integers of a PNM header/ASCII body from ``start``
    (``#`` comments skipped); returns them and the offset after the last one."""
    values: List[int] = []
    position = start
    length = len(data)
    while len(values) < count:
        while position < length and data[position:position + 1].isspace():
            position += 1
        if position < length and data[position:position + 1] == b"#":
            while position < length and data[position:position + 1] not in (b"\n", b"\r"):
                position += 1
            continue
        end = position
        while end < length and data[end:end + 1].isdigit():
            end += 1
        if end == position:
            raise ValueError("truncated or malformed PNM file")
        values.append(int(data[position:end]))
        position = end
    return values, position


def read_pnm(path: Path) -> np.ndarray:
    """A PGM (P2/P5: H x W) or PPM (P3/P6: H x W x 3) image as uint8 values 0-255
    (scaled from maxval when it is not 255)."""
    data = Path(path).read_bytes()
    magic = data[:2]
    if magic not in (b"P2", b"P3", b"P5", b"P6"):
        raise ValueError(f"{path}: not a PGM/PPM file (magic {magic!r}; P2, P3, P5 or P6 expected)")
    (width, height, maxval), position = _pnm_tokens(data, 2, 3)
    if not 0 < maxval < 65536:
        raise ValueError(f"{path}: bad maxval {maxval}")
    channels = 3 if magic in (b"P3", b"P6") else 1
    count = width * height * channels
    if magic in (b"P2", b"P3"):
        values, _ = _pnm_tokens(data, position, count)
        pixels = np.asarray(values, dtype=np.int64)
    else:
        position += 1  # the single whitespace byte after maxval
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        body = data[position:position + count * dtype.itemsize]
        if len(body) < count * dtype.itemsize:
            raise ValueError(f"{path}: truncated pixel data")
        pixels = np.frombuffer(body, dtype=dtype).astype(np.int64)
    if pixels.max(initial=0) > maxval:
        raise ValueError(f"{path}: pixel value above maxval {maxval}")
    if maxval != 255:
        pixels = np.floor(pixels * 255.0 / maxval + 0.5).astype(np.int64)
    shape = (height, width, 3) if channels == 3 else (height, width)
    return pixels.reshape(shape).astype(np.uint8)


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def read_image(path: Path) -> np.ndarray:
    """An image file as a uint8 array H x W or H x W x C."""
    if path.suffix.lower() in PNM_SUFFIXES:
        return read_pnm(path)
    image_module = _pillow()
    if image_module is None:
        raise RuntimeError(
            f"{path}: reading {path.suffix or 'this'} images needs Pillow, which is not "
            "installed (pip install pillow), or convert the images to PGM/PPM or an .npz first"
        )
    with image_module.open(path) as image:
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        return np.asarray(image, dtype=np.uint8)


# --------------------------------------------------------------------------- conversion

def to_grey(image: np.ndarray) -> np.ndarray:
    """H x W (x C) integer pixels 0-255 -> H x W uint8 BT.601 luma, rounded half up."""
    array = np.asarray(image)
    if array.dtype.kind not in "iu":
        raise ValueError(f"pixels must be integers 0-255, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError("pixels must be integers 0-255")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return array.astype(np.uint8)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image must be H x W or H x W x C with C in 1, 3, 4; got shape {array.shape}")
    rgb = array[:, :, :3].astype(np.float64)
    luma = rgb @ np.asarray(LUMA_WEIGHTS)
    return np.floor(luma + 0.5).clip(0, 255).astype(np.uint8)


def resize_grey(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an H x W uint8 grey image (Pillow needed)."""
    if image.shape == (height, width):
        return image
    image_module = _pillow()
    if image_module is None:
        raise RuntimeError("--resize needs Pillow, which is not installed (pip install pillow)")
    bilinear = getattr(image_module, "Resampling", image_module).BILINEAR
    resized = image_module.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize((width, height), bilinear)
    return np.asarray(resized, dtype=np.uint8)


def convert_images(images: Iterable[np.ndarray], names: Iterable[str],
                   resize: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Grey-scale (and resized) images as an N x (H*W) uint8 array; all must end up with
    the same size (``names`` label the offending image in the error)."""
    rows = []
    shape = None
    for image, name in zip(images, names):
        grey = to_grey(image)
        if resize is not None:
            grey = resize_grey(grey, *resize)
        if shape is None:
            shape = grey.shape
        elif grey.shape != shape:
            raise ValueError(
                f"{name}: image is {grey.shape[0]}x{grey.shape[1]} but the first one is "
                f"{shape[0]}x{shape[1]}; pass --resize HEIGHT WIDTH to give all the same size"
            )
        rows.append(grey.reshape(-1))
    if not rows:
        raise ValueError("no images found")
    return np.stack(rows)


def _class_ids(class_names: List[str], classes_file: Path) -> Tuple[dict, Optional[List[str]]]:
    """Class name -> id.  Integer folder names are the ids; otherwise the ids come from
    ``classes_file`` when it exists, else from the sorted names (returned to be written)."""
    if all(name.isdigit() for name in class_names):
        return {name: int(name) for name in class_names}, None
    if classes_file.exists():
        known = read_text(classes_file).split("\n")
        known = [name for name in known if name]
        unknown = sorted(set(class_names) - set(known))
        if unknown:
            raise ValueError(f"class folder(s) {', '.join(unknown)} not in {classes_file} "
                             "(written by the first split converted)")
        return {name: known.index(name) for name in class_names}, None
    ordered = sorted(class_names)
    return {name: i for i, name in enumerate(ordered)}, ordered


def load_folder(root: Path, out_dir: Path, resize=None,
                outputs: Optional[AtomicOutputs] = None) -> Tuple[np.ndarray, np.ndarray]:
    """ROOT/<class>/<image> -> (N x H*W uint8 pixels, N labels); may write classes.txt
    (through ``outputs`` when given)."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise ValueError(f"{root}: no class sub-folders (expected ROOT/<class>/<image files>)")
    ids, new_classes = _class_ids([p.name for p in class_dirs], out_dir / "classes.txt")
    paths, labels = [], []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        paths.extend(files)
        labels.extend([ids[class_dir.name]] * len(files))
    pixels = convert_images((read_image(p) for p in paths), (str(p) for p in paths), resize)
    if new_classes is not None:
        text = "".join(name + "\n" for name in new_classes)
        if outputs is None:
            with AtomicOutputs() as own:
                own.path(out_dir / "classes.txt").write_text(text)
        else:
            outputs.path(out_dir / "classes.txt").write_text(text)
    return pixels, np.asarray(labels, dtype=np.int64)


def load_npz(path: Path, resize=None) -> Tuple[np.ndarray, np.ndarray]:
    """An .npz with ``x`` (N x H x W (x C)) and ``y`` (N) -> (N x H*W uint8, N labels)."""
    with np.load(path) as archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {', '.join(missing)} (has {', '.join(archive.files)})")
        x, y = archive["x"], archive["y"]
    if x.ndim not in (3, 4):
        raise ValueError(f"{path}: x must be N x H x W or N x H x W x C, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{path}: y must hold one label per image ({len(x)}), got shape {y.shape}")
    if y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
        raise ValueError(f"{path}: y must hold non-negative integer labels, got dtype {y.dtype}")
    pixels = convert_images(x, (f"{path}: image {i}" for i in range(len(x))), resize)
    return pixels, y.astype(np.int64)


def write_split(out_dir: Path, split: str, pixels: np.ndarray, labels: np.ndarray, npy: bool = False,
                outputs: Optional[AtomicOutputs] = None) -> None:
    """Write ``{split}.input`` / ``{split}.label`` (and ``{split}.input.npy``), through
    ``outputs`` when given."""
    if outputs is None:
        with AtomicOutputs() as own:
            return write_split(out_dir, split, pixels, labels, npy, own)
    with open(outputs.path(out_dir / f"{split}.input"), "w") as handle:
        for row in pixels:
            handle.write(" ".join(map(str, row.tolist())) + "\n")
    with open(outputs.path(out_dir / f"{split}.label"), "w") as handle:
        handle.writelines(f"{int(label)}\n" for label in labels)
    if npy:
        with open(outputs.path(out_dir / f"{split}.input.npy"), "wb") as handle:
            np.save(handle, np.ascontiguousarray(pixels, dtype=np.uint8))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="ROOT/<class>/<image> folder or an .npz")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--split", default="train", help="output name: {split}.input / {split}.label")
    parser.add_argument("--resize", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="resize every (grey) image, bilinear (needs Pillow)")
    parser.add_argument("--npy", action="store_true", help="also write {split}.input.npy (uint8 N x H*W)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    resize = tuple(args.resize) if args.resize else None
    if resize is not None and min(resize) <= 0:
        raise SystemExit("--resize needs positive HEIGHT and WIDTH")
    with AtomicOutputs() as outputs:
        try:
            if args.input.is_dir():
                pixels, labels = load_folder(args.input, args.out_dir, resize, outputs)
            elif args.input.suffix == ".npz":
                pixels, labels = load_npz(args.input, resize)
            else:
                raise ValueError(f"{args.input}: expected a folder of class sub-folders or an .npz file")
        except (ValueError, RuntimeError, OSError) as error:
            raise SystemExit(f"images_to_pixel_sequences: {error}")
        write_split(args.out_dir, args.split, pixels, labels, npy=args.npy, outputs=outputs)
    print(f"{args.split}: {len(labels)} images of {pixels.shape[1]} pixels -> {args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
